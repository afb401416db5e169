// The admin view (admin keys): the tenant's stats, API keys (a new key's secret is shown once),
// dead letters with replay, and the maintenance jobs.
import { failure, type Api } from "./api";
import { clearErrors, field, fill, h, showErrors } from "./dom";
import { roleLabel, when } from "./format";
import { MaintenanceJob } from "./gen/memoire/v1/admin_pb";
import { KeyRole } from "./gen/memoire/v1/types_pb";

export function adminView(api: Api, tenantId: string, tenantName?: string): HTMLElement {
  const stats = h("div", { "aria-live": "polite" });
  const keys = h("div", { "aria-live": "polite" });
  const dead = h("div", { "aria-live": "polite" });
  const banner = h("div", { class: "banner", role: "alert" });
  const root = h("section", { class: "pane", "aria-labelledby": "admin-title" });
  const fail = (e: unknown) => showErrors(root, banner, failure(e));

  const loadStats = () => api.admin.getStats({ tenantId }).then((s) => fill(stats,
    h("dl", { class: "stats" },
      [["users", s.users], ["active memories", s.activeMemories], ["superseded", s.supersededMemories], ["forgotten", s.forgottenMemories],
        ["versions", s.versions], ["episodes", s.episodes], ["content bytes", s.contentBytes]].flatMap(([k, v]) => [h("dt", {}, String(k)), h("dd", {}, String(v))]),
      s.quotas.flatMap((q) => [h("dt", {}, `quota ${q.name}`), h("dd", {}, `${q.used} / ${q.limit || "∞"}`)]),
    )), fail);

  const loadKeys = () => api.admin.listApiKeys({ tenantId }).then((r) => fill(keys,
    h("table", {},
      h("caption", {}, "API keys"),
      h("thead", {}, h("tr", {}, ["name", "role", "prefix", "created", "revoked", ""].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, r.keys.map((k) => h("tr", {},
        h("td", {}, k.name), h("td", {}, roleLabel(k.role)), h("td", {}, h("code", {}, k.prefix)),
        h("td", {}, when(k.createdAt)), h("td", {}, when(k.revokedAt)),
        h("td", {}, k.revokedAt ? "" : h("button", { type: "button", class: "danger", onclick: () => void api.admin.revokeApiKey({ keyId: k.id }).then(loadKeys, fail) }, `Revoke ${k.name}`)),
      ))),
    )), fail);

  const name = h("input", { type: "text" });
  const role = h("select", {}, [KeyRole.READER, KeyRole.WRITER, KeyRole.ADMIN].map((r) => h("option", { value: String(r) }, roleLabel(r))));
  const secret = h("div", { class: "secret", "aria-live": "polite" });
  const keyBanner = h("div", { class: "banner", role: "alert" });
  const keyForm = h("form", { novalidate: true, "aria-label": "Create API key" },
    h("div", { class: "row" }, field("Key name", "name", name), field("Role", "role", role)),
    keyBanner,
    h("button", { type: "submit" }, "Create key"),
    secret,
  );
  keyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearErrors(keyForm, keyBanner);
    api.admin.createApiKey({ tenantId, name: name.value, role: Number(role.value) as KeyRole }).then(
      (r) => {
        fill(secret, h("p", {}, "The secret, shown this once — copy it now:"), h("code", { class: "secret-value" }, r.secret));
        name.value = "";
        void loadKeys();
      },
      (e: unknown) => showErrors(keyForm, keyBanner, failure(e)),
    );
  });

  const loadDead = () => api.admin.listDeadLetters({ tenantId, pageSize: 100 }).then((r) => fill(dead,
    r.deadLetters.length === 0 ? h("p", { class: "empty" }, "No dead letters.") : [
      h("ul", {}, r.deadLetters.map((d) => h("li", {}, `${when(d.createdAt)} · ${d.job} · ${d.attempts} attempts · ${d.error}`))),
      h("button", { type: "button", onclick: () => void api.admin.replayDeadLetters({ tenantId, ids: r.deadLetters.map((d) => d.id) }).then(loadDead, fail) }, "Replay all"),
    ]), fail);

  const job = h("select", {}, [MaintenanceJob.OPTIMIZE, MaintenanceJob.DECAY, MaintenanceJob.REFLECT, MaintenanceJob.RETENTION, MaintenanceJob.REEMBED].map((j) => h("option", { value: String(j) }, MaintenanceJob[j].toLowerCase())));
  const jobResult = h("pre", { class: "prompt", "aria-live": "polite" });
  const jobBanner = h("div", { class: "banner", role: "alert" });
  const jobForm = h("form", { novalidate: true, "aria-label": "Run maintenance" }, field("Job", "job", job), jobBanner, h("button", { type: "submit" }, "Run and wait"), jobResult);
  jobForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearErrors(jobForm, jobBanner);
    api.admin.runMaintenance({ tenantId, job: Number(job.value) as MaintenanceJob, wait: true }).then(
      (r) => fill(jobResult, `${r.jobId}: ${r.finished ? "finished" : "running"}\n${r.resultJson}`),
      (e: unknown) => showErrors(jobForm, jobBanner, failure(e)),
    );
  });

  fill(root,
    h("h2", { id: "admin-title" }, tenantName ? `Admin: ${tenantName}` : "Admin"),
    banner,
    h("h3", {}, "Stats"), stats,
    h("h3", {}, "API keys"), keys, keyForm,
    h("h3", {}, "Dead letters"), dead,
    h("h3", {}, "Maintenance"), jobForm,
  );
  void loadStats();
  void loadKeys();
  void loadDead();
  return root;
}

/** The bootstrap admin key's view: every tenant; create one; manage one's keys and jobs. */
export function tenantsView(api: Api): HTMLElement {
  const body = h("tbody", {});
  const banner = h("div", { class: "banner", role: "alert" });
  const manage = h("div", {});
  const root = h("section", { class: "pane", "aria-labelledby": "tenants-title" });
  const load = () => api.admin.listTenants({}).then((r) => fill(body,
    r.tenants.map((t) => h("tr", {},
      h("td", {}, t.name), h("td", {}, h("code", {}, t.id)), h("td", {}, when(t.createdAt)),
      h("td", {}, h("button", { type: "button", "aria-label": `Manage ${t.name}`, onclick: () => fill(manage, adminView(api, t.id, t.name)) }, "Manage")),
    ))), (e: unknown) => showErrors(root, banner, failure(e)));

  const name = h("input", { type: "text" });
  const formBanner = h("div", { class: "banner", role: "alert" });
  const form = h("form", { novalidate: true, "aria-label": "Create tenant" },
    field("Tenant name", "name", name), formBanner, h("button", { type: "submit" }, "Create tenant"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearErrors(form, formBanner);
    api.admin.createTenant({ name: name.value }).then(
      () => { name.value = ""; void load(); },
      (e: unknown) => showErrors(form, formBanner, failure(e)),
    );
  });
  fill(root,
    h("h2", { id: "tenants-title" }, "Tenants"),
    h("p", { class: "note" }, "The bootstrap admin key manages tenants and their keys. To see a tenant's memory, sign in with one of its keys."),
    banner,
    h("table", {}, h("caption", {}, "Every tenant"),
      h("thead", {}, h("tr", {}, ["name", "id", "created", ""].map((c) => h("th", { scope: "col" }, c)))), body),
    form,
    manage,
  );
  void load();
  return root;
}
