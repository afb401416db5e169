// The Memory Inspector: sign in with an API key (kept for this tab only), then chat with memory,
// inspect and edit it, ask why Recall returned what it did, and (admin keys) run the tenant.
import { failure, connect, type Api } from "./api";
import { adminView, tenantsView } from "./admin";
import { ChatPane } from "./chat";
import { field, fill, h, showErrors } from "./dom";
import { roleLabel } from "./format";
import type { WhoAmIResponse } from "./gen/memoire/v1/memory_pb";
import { KeyRole } from "./gen/memoire/v1/types_pb";
import { MemoryPane } from "./memory";
import { episodesView, usersView } from "./people";
import { consciousPlayground, recallPlayground } from "./playground";

const KEY = "memoire.inspector.key";
const root = document.getElementById("app")!;

function signIn(message?: string): void {
  const key = h("input", { type: "password", autocomplete: "off", required: true });
  const banner = h("div", { class: "banner", role: "alert" });
  const form = h("form", { novalidate: true, class: "sign-in", "aria-label": "Sign in" },
    h("h1", {}, "Mémoire Inspector"),
    h("p", {}, "Sign in with an API key. It is kept for this tab only and sent with every call; the server decides what it may do."),
    field("API key", "api_key", key),
    banner,
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const api = connect(key.value.trim());
    api.memory.whoAmI({}).then(
      (who) => {
        sessionStorage.setItem(KEY, key.value.trim());
        shell(api, who);
      },
      (e: unknown) => showErrors(form, banner, failure(e)),
    );
  });
  fill(root, form);
  if (message) {
    banner.textContent = message;
    banner.classList.add("visible");
  }
  key.focus();
}

function shell(api: Api, who: WhoAmIResponse): void {
  const readOnly = who.role === KeyRole.READER ? "This is a reader key: it can read memory but not change it." : null;
  const user = h("input", { type: "text", value: "demo-user" });
  const namespace = h("input", { type: "text", value: "default" });
  const session = h("input", { type: "text", value: `inspector-${new Date().toISOString().slice(0, 10)}` });
  const scope = () => ({ user: user.value.trim(), namespace: namespace.value.trim() || "default", session: session.value.trim() });

  const memory = new MemoryPane(api, scope, readOnly);
  const chat = new ChatPane(api, scope, memory, readOnly);
  memory.onRefresh = () => void chat.rebuild();
  const openUser = (id: string) => {
    user.value = id;
    select(0);
    void memory.refresh();
  };
  const views: [string, () => HTMLElement][] = [
    ["Chat & memory", () => h("div", { class: "split" }, chat.el, memory.el)],
    ["Users", () => usersView(api, scope, openUser)],
    ["Episodes", () => episodesView(api, scope)],
    ["Recall", () => recallPlayground(api, scope, {
      memory: (m) => { select(0); void memory.history(m); },
      session: (id) => { session.value = id; select(2); },
    })],
    ["Conscious", () => consciousPlayground(api, scope)],
  ];
  if (who.role === KeyRole.ADMIN && who.tenantId) views.push(["Admin", () => adminView(api, who.tenantId)]);
  // The bootstrap admin key has no tenant: it manages tenants and keys, and reads no memory.
  const bootstrap = !who.tenantId;
  if (bootstrap) views.splice(0, views.length, ["Tenants", () => tenantsView(api)]);

  const main = h("main", { id: "main", tabindex: -1 });
  const tabs = h("nav", { class: "tabs", role: "tablist", "aria-label": "Views" });
  const select = (i: number) => {
    tabs.querySelectorAll("button").forEach((b, j) => {
      b.setAttribute("aria-selected", String(i === j));
      b.tabIndex = i === j ? 0 : -1;
    });
    fill(main, views[i][1]());
  };
  views.forEach(([title], i) => {
    const tab = h("button", { type: "button", role: "tab", onclick: () => select(i) }, title);
    tab.addEventListener("keydown", (ev) => {
      const step = ev.key === "ArrowRight" ? 1 : ev.key === "ArrowLeft" ? -1 : 0;
      if (!step) return;
      const next = (i + step + views.length) % views.length;
      select(next);
      (tabs.children[next] as HTMLElement).focus();
    });
    tabs.append(tab);
  });
  const reload = () => void memory.refresh();
  user.addEventListener("change", reload);
  namespace.addEventListener("change", reload);

  fill(root,
    h("a", { class: "skip", href: "#main" }, "Skip to content"),
    h("header", { class: "top" },
      h("h1", {}, "Mémoire Inspector"),
      h("span", { class: "badge role", "data-role": roleLabel(who.role) }, `${roleLabel(who.role)} key`),
      h("span", { class: "tenant" }, who.tenantId ? `tenant ${who.tenantId}` : "bootstrap admin"),
      h("button", { type: "button", onclick: () => { sessionStorage.removeItem(KEY); signIn(); } }, "Sign out"),
    ),
    readOnly ? h("p", { id: "readonly-note", class: "note", role: "note" }, readOnly) : null,
    bootstrap ? null : h("div", { class: "scope", role: "group", "aria-label": "Whose memory" },
      field("User", "user_id", user),
      field("Namespace", "namespace", namespace),
      field("Session", "session_id", session),
    ),
    tabs,
    main,
  );
  select(0);
  if (!bootstrap) void memory.refresh();
}

const saved = sessionStorage.getItem(KEY);
if (saved) {
  const api = connect(saved);
  api.memory.whoAmI({}).then(
    (who) => shell(api, who),
    () => { sessionStorage.removeItem(KEY); signIn("Your key no longer works; sign in again."); },
  );
} else {
  signIn();
}
