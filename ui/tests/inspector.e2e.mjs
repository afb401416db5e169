// The Inspector in a real browser (Debian's Chromium, driven by playwright-core) against a real
// server: the walk-through, step by step, with a screenshot of each step.
//
// Run by tests/python/test_inspector.py, which starts the server and passes:
//   MEMOIRE_UI_URL       the Inspector's URL (http://127.0.0.1:<http port>/ui/)
//   MEMOIRE_WRITER_KEY   a writer key of a fresh tenant
//   MEMOIRE_READER_KEY   a reader key of the same tenant
//   MEMOIRE_ADMIN_KEY    an admin key of the same tenant
//   MEMOIRE_BOOTSTRAP_KEY the server's bootstrap admin key
//   MEMOIRE_USER_ID      the user to chat as
//   MEMOIRE_ARTIFACTS    where the screenshots go
// Exits non-zero, naming the step, when anything is not as expected.
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const url = env("MEMOIRE_UI_URL");
const writerKey = env("MEMOIRE_WRITER_KEY");
const readerKey = env("MEMOIRE_READER_KEY");
const adminKey = env("MEMOIRE_ADMIN_KEY");
const bootstrapKey = env("MEMOIRE_BOOTSTRAP_KEY");
const user = env("MEMOIRE_USER_ID");
const artifacts = env("MEMOIRE_ARTIFACTS");
const chromiumPath = process.env.MEMOIRE_CHROMIUM ?? "/usr/bin/chromium";
mkdirSync(artifacts, { recursive: true });

const profile = mkdtempSync(join(tmpdir(), "memoire-inspector-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: chromiumPath,
  headless: true,
  viewport: { width: 1366, height: 900 },
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = context.pages()[0] ?? (await context.newPage());
const outside = [];
page.on("request", (r) => {
  const u = new URL(r.url());
  if (u.host !== new URL(url).host && u.protocol !== "data:") outside.push(r.url());
});
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(String(e)));

let n = 0;
async function step(name, body) {
  n += 1;
  const shot = join(artifacts, `${String(n).padStart(2, "0")}-${name.replace(/[^a-z0-9]+/gi, "-").toLowerCase()}.png`);
  try {
    await body();
  } catch (e) {
    await page.screenshot({ path: shot.replace(/\.png$/, "-FAILED.png"), fullPage: true }).catch(() => {});
    throw new Error(`step ${n} "${name}" failed: ${e.message}`);
  }
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`ok ${n} - ${name}`);
}
const expect = (cond, what) => {
  if (!cond) throw new Error(what);
};
const memoryPane = () => page.locator(".memory-pane");
const card = (text) => memoryPane().locator("li.memory", { hasText: text });
const prompt = () => page.locator(".chat-pane pre.prompt");

async function signIn(key) {
  await page.goto(url);
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("tab", { name: "Chat & memory" }).waitFor();
  await page.getByLabel("User", { exact: true }).fill(user);
  await page.getByLabel("User", { exact: true }).dispatchEvent("change");
}

async function say(text) {
  await page.getByLabel("Message").fill(text);
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator(".chat-log li", { hasText: text }).locator(".state", { hasText: "remembered" }).waitFor();
}

try {
  await step("sign-in rejects a wrong key", async () => {
    await page.goto(url);
    await page.getByLabel("API key").waitFor();
    // The first load, cold cache: what the README quotes.
    const load = await page.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0];
      const bytes = performance.getEntriesByType("resource").reduce((sum, r) => sum + r.transferSize, nav.transferSize);
      return { ready: nav.domContentLoadedEventEnd, loaded: nav.loadEventEnd, bytes };
    });
    console.log(`first load: DOMContentLoaded ${load.ready.toFixed(0)} ms, load ${load.loaded.toFixed(0)} ms, ${(load.bytes / 1024).toFixed(1)} KiB transferred`);
    await page.getByLabel("API key").fill("not-a-key");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator(".sign-in .banner.visible", { hasText: "UNAUTHENTICATED" }).waitFor();
  });

  await step("sign in with a writer key", async () => {
    await signIn(writerKey);
    await page.locator(".badge.role", { hasText: "writer key" }).waitFor();
  });

  await step("chat: I live in Lisbon", async () => {
    await say("I live in Lisbon");
    // The server's chat model answered (a fake OpenAI-compatible one in the tests).
    await page.locator(".chat-log li.assistant", { hasText: "Here is my answer" }).first().waitFor();
    await card("Lisbon").waitFor();
    await prompt().filter({ hasText: "Lisbon" }).waitFor();
  });

  await step("chat: I moved to Porto supersedes Lisbon", async () => {
    await say("I moved to Porto");
    await card("Porto").waitFor();
    expect((await card("Lisbon").count()) === 0, "Lisbon is still shown as current");
    await page.getByLabel("show superseded").check();
    const lisbon = card("Lisbon");
    await lisbon.locator(".badge.status", { hasText: "superseded" }).waitFor();
    await lisbon.getByRole("button", { name: "History" }).click();
    const timeline = page.getByRole("list", { name: "Version history" });
    await timeline.locator("li", { hasText: "supersede" }).waitFor();
    await timeline.locator("li", { hasText: "superseded by" }).waitFor();
    await page.getByRole("button", { name: "Close" }).click();
    await page.getByLabel("show superseded").uncheck();
  });

  await step("the tenant's users and the session's turns", async () => {
    await page.getByRole("tab", { name: "Users" }).click();
    const row = page.locator("tr", { hasText: user });
    await row.waitFor();
    expect((await row.locator("td").nth(1).textContent()) === "1", "the user should have one active memory");
    await page.getByRole("tab", { name: "Episodes" }).click();
    const turns = page.locator("ol.episodes li");
    await turns.nth(3).waitFor();
    const said = await turns.allTextContents();
    // The user's turns and the model's replies, in the order they were said.
    expect(said[0].startsWith("user I live in Lisbon") && said[1].startsWith("assistant Here is my answer")
      && said[2].startsWith("user I moved to Porto"), `turns out of order: ${said}`);
    await page.getByRole("tab", { name: "Users" }).click();
    await page.getByRole("button", { name: `Open ${user}` }).click();
    await card("Porto").waitFor();
  });

  await step("a correction is checked by the server, named next to its field", async () => {
    await card("Porto").getByRole("button", { name: "Edit" }).click();
    await page.getByLabel("Importance (0–1)").fill("5");
    await page.getByRole("button", { name: "Save correction" }).click();
    const error = page.locator('[data-error-for="importance"]');
    await error.filter({ hasText: /./ }).waitFor();
    expect((await page.getByLabel("Importance (0–1)").getAttribute("aria-invalid")) === "true", "the importance field is not marked invalid");
  });

  await step("edit Porto to Porto, Portugal: the next prompt has the correction", async () => {
    await page.getByLabel("Importance (0–1)").fill("0.8");
    await page.getByLabel("Content").fill("Porto, Portugal");
    await page.getByLabel("Reason").fill("the user's own words were more precise");
    await page.getByRole("button", { name: "Save correction" }).click();
    await card("Porto, Portugal").locator(".badge.change", { hasText: "corrected" }).waitFor();
    await say("What should I visit this weekend?");
    await prompt().filter({ hasText: "What should I visit this weekend?" }).filter({ hasText: "Porto, Portugal" }).waitFor();
  });

  await step("forget it: gone from the next prompt and from Recall", async () => {
    await card("Porto, Portugal").getByRole("button", { name: "Forget" }).click();
    await memoryPane().locator("li.memory", { hasText: "Porto" }).waitFor({ state: "detached" });
    await say("Any restaurant tips?");
    await prompt().filter({ hasText: "Any restaurant tips?" }).waitFor();
    const text = await prompt().textContent();
    expect(!text.includes("Porto, Portugal"), `the prompt still has the forgotten memory:\n${text}`);
    await page.getByRole("tab", { name: "Recall" }).click();
    await page.getByLabel("Query").fill("Where does the user live? Porto");
    await page.getByLabel("Conversation turns").selectOption("false");
    await page.getByRole("button", { name: "Recall", exact: true }).click();
    const results = page.locator(".results");
    await results.locator("table.explain").waitFor();
    const found = await results.textContent();
    expect(!found.includes("Porto, Portugal"), "Recall still returns the forgotten memory");
  });

  await step("why did it recall that: score components and the packed context", async () => {
    await page.getByLabel("Query").fill("Where did the user live before?");
    await page.getByLabel("Conversation turns").selectOption("true");
    await page.getByRole("button", { name: "Recall", exact: true }).click();
    const table = page.locator("table.explain");
    await table.locator("tbody tr").first().waitFor();
    await page.locator(".results pre.prompt").waitFor();
  });

  await step("provenance: a recalled turn leads to its session's turns", async () => {
    await page.locator("table.explain").getByRole("button", { name: /^session / }).first().click();
    await page.getByRole("tab", { name: "Episodes", selected: true }).waitFor();
    await page.locator("ol.episodes li", { hasText: "I live in Lisbon" }).waitFor();
  });

  await step("bad input in the Recall form is named next to its field", async () => {
    await page.getByRole("tab", { name: "Recall" }).click();
    await page.getByLabel("Query").fill("   ");
    await page.getByRole("button", { name: "Recall", exact: true }).click();
    await page.locator('[data-error-for="query"]').filter({ hasText: /./ }).waitFor();
  });

  await step("a reader key cannot edit, and the controls say why", async () => {
    await page.getByRole("button", { name: "Sign out" }).click();
    await signIn(readerKey);
    await page.locator(".badge.role", { hasText: "reader key" }).waitFor();
    const note = page.locator("#readonly-note");
    await note.waitFor();
    expect((await note.textContent()).includes("reader key"), "the read-only note does not say why");
    await page.getByLabel("show superseded").check();
    const lisbon = card("Lisbon");
    await lisbon.waitFor();
    const edit = lisbon.getByRole("button", { name: "Edit" });
    expect(await edit.isDisabled(), "Edit is enabled for a reader key");
    expect((await page.getByRole("button", { name: "Send" }).isDisabled()), "Send is enabled for a reader key");
    expect((await page.getByRole("button", { name: "Purge user…" }).isDisabled()), "Purge is enabled for a reader key");
    expect((await edit.getAttribute("aria-describedby")) === "readonly-note", "Edit does not point at the reason");
  });

  await step("keyboard: the views are tabs reached with the arrow keys", async () => {
    await page.getByRole("tab", { name: "Chat & memory" }).focus();
    await page.keyboard.press("ArrowRight");
    await page.getByRole("tab", { name: "Users", selected: true }).waitFor();
  });

  await step("admin: a new key's secret is shown once, then revoked; a maintenance job runs", async () => {
    await page.getByRole("button", { name: "Sign out" }).click();
    await signIn(adminKey);
    await page.getByRole("tab", { name: "Admin" }).click();
    await page.locator("dl.stats").waitFor();
    await page.getByLabel("Key name").fill("ui-made");
    await page.getByLabel("Role").selectOption({ label: "reader" });
    await page.getByRole("button", { name: "Create key" }).click();
    const secret = await page.locator(".secret-value").textContent();
    expect(secret && secret.length >= 20, `no secret shown: ${secret}`);
    const revoke = page.getByRole("button", { name: "Revoke ui-made" });
    await revoke.click();
    await revoke.waitFor({ state: "detached" });
    await page.locator("tr", { hasText: "ui-made" }).waitFor();
    await page.getByLabel("Job").selectOption({ label: "decay" });
    await page.getByRole("button", { name: "Run and wait" }).click();
    await page.locator("form[aria-label='Run maintenance'] pre", { hasText: "finished" }).waitFor();
  });

  await step("purge: a dry run first, then the typed user id", async () => {
    await page.getByRole("tab", { name: "Chat & memory" }).click();
    await page.getByLabel("show superseded").check();
    await card("Lisbon").waitFor();
    await page.getByRole("button", { name: "Purge user…" }).click();
    await page.locator(".preview", { hasText: "would erase" }).waitFor();
    const go = page.getByRole("button", { name: "Purge for good" });
    expect(await go.isDisabled(), "purge is possible before the user id is typed");
    await page.getByLabel(/Type the user id/).fill(user);
    await go.click();
    await page.locator(".preview", { hasText: "Purged" }).waitFor();
    await memoryPane().locator(".empty", { hasText: "No memories" }).waitFor();
  });

  await step("bootstrap admin: tenants, and a bad name named next to its field", async () => {
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByLabel("API key").fill(bootstrapKey);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("tab", { name: "Tenants" }).waitFor();
    await page.getByRole("button", { name: "Create tenant" }).click();
    await page.locator('[data-error-for="name"]').filter({ hasText: /./ }).waitFor();
    await page.getByLabel("Tenant name").fill("made-in-the-inspector");
    await page.getByRole("button", { name: "Create tenant" }).click();
    await page.getByRole("button", { name: "Manage made-in-the-inspector" }).click();
    await page.getByRole("heading", { name: "Admin: made-in-the-inspector" }).waitFor();
    await page.locator("dl.stats").waitFor();
  });

  expect(outside.length === 0, `requests left the server's origin: ${outside.join(", ")}`);
  expect(consoleErrors.length === 0, `page errors: ${consoleErrors.join("; ")}`);
  console.log(`all ${n} steps passed; screenshots in ${artifacts}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
