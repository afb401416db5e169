// The memory pane: a user's memories in the four views, with search and filters; one memory's
// history as a timeline; correct, pin, set importance/expiry, forget; purge with a preview.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { failure, type Api } from "./api";
import { clearErrors, field, fill, h, showErrors } from "./dom";
import { basisLabel, KINDS, kindLabel, num, opLabel, statusLabel, VIEWS, when } from "./format";
import { ForgetMode, type TeachRequestSchema } from "./gen/memoire/v1/memory_pb";
import { ForgetSelectorSchema } from "./gen/memoire/v1/memory_pb";
import { MemoryStatus, type Memory, type MemoryKind } from "./gen/memoire/v1/types_pb";

/** Who and where the pane looks. */
export interface Scope {
  user: string;
  namespace: string;
}

/** Why the write controls are off, when they are (a reader key). */
export type ReadOnly = string | null;

type Change = "new" | "corrected" | "superseded";

export class MemoryPane {
  readonly el: HTMLElement;
  private readonly list = h("div", { class: "memory-groups", "aria-live": "polite" });
  private readonly detail = h("section", { class: "memory-detail", "aria-label": "Memory detail", hidden: true });
  private readonly banner = h("div", { class: "banner", role: "alert" });
  private readonly search = h("input", { type: "search", placeholder: "Search content, slot, tags" });
  private readonly kind = h("select", {});
  private readonly superseded = h("input", { type: "checkbox" });
  private memories: Memory[] = [];
  /** What each memory was at the last refresh: to highlight what changed since. */
  private seen = new Map<string, { status: MemoryStatus; version: number }>();
  private changes = new Map<string, Change>();
  /** The user, namespace and kind of the last read. */
  private loadedKey = "";
  /** Called after every refresh (the chat rebuilds its prompt from the memory as it is now). */
  onRefresh: (() => void) | null = null;

  constructor(
    private readonly api: Api,
    private readonly scope: () => Scope,
    private readonly readOnly: ReadOnly,
  ) {
    this.kind.append(h("option", { value: "" }, "All kinds"), ...KINDS.map((k) => h("option", { value: String(k) }, kindLabel(k))));
    this.search.addEventListener("input", () => this.render());
    this.kind.addEventListener("change", () => void this.refresh());
    this.superseded.addEventListener("change", () => void this.refresh());
    const superseded = h("label", { class: "inline" }, this.superseded, " show superseded");
    this.el = h(
      "section",
      { class: "pane memory-pane", "aria-labelledby": "memory-title" },
      h("div", { class: "pane-head" },
        h("h2", { id: "memory-title" }, "Memory"),
        h("button", { type: "button", onclick: () => void this.refresh() }, "Refresh"),
        h("button", {
          type: "button",
          class: "danger",
          disabled: readOnly !== null,
          title: readOnly ?? "Erase this user's memories and episodes",
          "aria-describedby": readOnly ? "readonly-note" : undefined,
          onclick: () => this.purgeForm(),
        }, "Purge user…"),
      ),
      h("div", { class: "filters" },
        field("Search", "memory_search", this.search),
        field("Kind", "memory_kind", this.kind),
        superseded,
      ),
      this.banner,
      this.list,
      this.detail,
    );
  }

  /** Reads the user's memories again; what changed since the last read is highlighted. */
  async refresh(): Promise<void> {
    const { user, namespace } = this.scope();
    const kinds = this.kind.value ? [Number(this.kind.value) as MemoryKind] : [];
    const memories: Memory[] = [];
    try {
      let pageToken = "";
      do {
        const page = await this.api.memory.listMemories({
          userId: user,
          namespaces: [namespace],
          kinds,
          includeSuperseded: true,
          pageSize: 500,
          pageToken,
        });
        memories.push(...page.memories);
        pageToken = page.nextPageToken;
      } while (pageToken && memories.length < 2000);
    } catch (e) {
      showErrors(this.el, this.banner, failure(e));
      return;
    }
    clearErrors(this.el, this.banner);
    this.changes.clear();
    // Changes are marked against the last read of the same user, namespace and kind only.
    const key = JSON.stringify([user, namespace, kinds]);
    const first = key !== this.loadedKey;
    this.loadedKey = key;
    for (const m of memories) {
      const before = this.seen.get(m.id);
      if (first) continue;
      if (!before) this.changes.set(m.id, m.status === MemoryStatus.SUPERSEDED ? "superseded" : "new");
      else if (before && before.status !== m.status && m.status === MemoryStatus.SUPERSEDED) this.changes.set(m.id, "superseded");
      else if (before && before.version !== m.version) this.changes.set(m.id, "corrected");
    }
    this.seen = new Map(memories.map((m) => [m.id, { status: m.status, version: m.version }]));
    this.memories = memories;
    this.render();
    this.onRefresh?.();
  }

  private render(): void {
    const needle = this.search.value.trim().toLowerCase();
    const shown = this.memories.filter(
      (m) =>
        (this.superseded.checked || m.status === MemoryStatus.ACTIVE) &&
        (!needle || [m.content, m.slot, m.subject, ...m.tags].some((s) => s.toLowerCase().includes(needle))),
    );
    const groups = VIEWS.map((view) => {
      const items = shown.filter((m) => view.kinds.includes(m.kind));
      if (items.length === 0) return null;
      return h("section", { class: "memory-group", "aria-label": view.title },
        h("h3", {}, `${view.title} (${items.length})`),
        h("ul", { class: "memories" }, items.map((m) => this.card(m))),
      );
    });
    fill(this.list, shown.length === 0 ? h("p", { class: "empty" }, "No memories yet for this user.") : groups);
  }

  private card(m: Memory): HTMLElement {
    const change = this.changes.get(m.id);
    const locked = this.readOnly !== null;
    const why = this.readOnly ?? undefined;
    const active = m.status === MemoryStatus.ACTIVE;
    return h("li", { class: `memory ${statusLabel(m.status)} ${change ? `changed-${change}` : ""}`, "data-memory-id": m.id },
      h("div", { class: "memory-content" }, m.content),
      h("div", { class: "memory-meta" },
        h("span", { class: "badge" }, kindLabel(m.kind)),
        m.status !== MemoryStatus.ACTIVE ? h("span", { class: "badge status" }, statusLabel(m.status)) : null,
        change ? h("span", { class: `badge change` }, change) : null,
        m.slot ? h("code", {}, m.slot) : null,
        m.pinned ? h("span", { class: "badge" }, "pinned") : null,
        h("span", {}, `importance ${num(m.importance, 2)}`),
        m.expiresAt ? h("span", {}, `expires ${when(m.expiresAt)}`) : null,
        h("span", {}, `v${m.version}`),
      ),
      h("div", { class: "memory-actions" },
        h("button", { type: "button", onclick: () => void this.history(m) }, "History"),
        h("button", { type: "button", disabled: locked || !active, title: why, "aria-describedby": locked ? "readonly-note" : undefined, onclick: () => this.editForm(m) }, "Edit"),
        h("button", { type: "button", disabled: locked || !active, title: why, "aria-describedby": locked ? "readonly-note" : undefined, onclick: () => void this.pin(m) }, m.pinned ? "Unpin" : "Pin"),
        h("button", { type: "button", class: "danger", disabled: locked || !active, title: why, "aria-describedby": locked ? "readonly-note" : undefined, onclick: () => void this.forget(m) }, "Forget"),
      ),
    );
  }

  private open(title: string, ...content: (Node | string | null)[]): void {
    const close = h("button", { type: "button", class: "close", onclick: () => { this.detail.hidden = true; } }, "Close");
    fill(this.detail, h("div", { class: "pane-head" }, h("h3", {}, title), close), ...content);
    this.detail.hidden = false;
    close.focus();
  }

  /** One memory's versions, oldest first: what changed, on what basis, with what score, why. */
  async history(m: Memory): Promise<void> {
    try {
      const { versions } = await this.api.memory.history({ memoryId: m.id });
      this.open(`History of ${m.id}`,
        h("ol", { class: "timeline", "aria-label": "Version history" }, versions.map((v) =>
          h("li", { class: `version op-${opLabel(v.op).replace(/ /g, "-")}` },
            h("div", { class: "version-head" },
              h("strong", {}, `v${v.version} ${opLabel(v.op)}`),
              h("span", {}, ` · ${basisLabel(v.basis)}`),
              v.score !== undefined ? h("span", {}, ` · score ${num(v.score)}`) : null,
              h("span", {}, ` · ${when(v.createdAt)}`),
              v.actor ? h("span", {}, ` · by ${v.actor}`) : null,
            ),
            h("div", { class: "version-content" }, v.content),
            v.reason ? h("div", { class: "version-reason" }, `Reason: ${v.reason}`) : null,
            h("div", { class: "memory-meta" },
              h("span", { class: "badge status" }, statusLabel(v.status)),
              v.slot ? h("code", {}, v.slot) : null,
              v.supersededBy ? h("span", {}, `superseded by ${v.supersededBy}`) : null,
            ),
          ))),
        m.sourceEpisodeIds.length
          ? h("p", { class: "provenance" }, `Source turns: ${m.sourceEpisodeIds.join(", ")}`)
          : h("p", { class: "provenance" }, "Source: taught directly (no conversation turn)."),
      );
    } catch (e) {
      showErrors(this.el, this.banner, failure(e));
    }
  }

  private editForm(m: Memory): void {
    const content = h("textarea", { rows: 3 });
    content.value = m.content;
    const importance = h("input", { type: "number", min: 0, max: 1, step: 0.05 });
    const shownImportance = String(Math.round(m.importance * 100) / 100);
    importance.value = shownImportance;
    const expires = h("input", { type: "datetime-local" });
    if (m.expiresAt) expires.value = localInput(timestampDate(m.expiresAt));
    const shownExpiry = expires.value;
    const reason = h("input", { type: "text", placeholder: "Why the correction (kept in the history)" });
    const banner = h("div", { class: "banner", role: "alert" });
    const form = h("form", { novalidate: true, class: "edit-form", "aria-label": "Correct memory" },
      field("Content", "content", content),
      field("Importance (0–1)", "importance", importance),
      field("Expires at (local time)", "expires_at", expires),
      field("Reason", "reason", reason),
      banner,
      h("button", { type: "submit" }, "Save correction"),
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      // Only what the user changed: the rest keeps its current value (unset fields do).
      const req: MessageInitShape<typeof TeachRequestSchema> = {
        userId: m.userId,
        namespace: m.namespace,
        memoryId: m.id,
        reason: reason.value || undefined,
      };
      if (content.value !== m.content) req.content = content.value;
      if (importance.value !== shownImportance) req.importance = importance.value === "" ? Number.NaN : Number(importance.value);
      if (expires.value !== shownExpiry) {
        if (!expires.value) {
          showErrors(form, banner, { code: "INVALID_ARGUMENT", message: "", fields: new Map([["expires_at", "An expiry cannot be removed here; forget the memory or set a later time."]]) });
          return;
        }
        req.expiresAt = timestampFromDate(new Date(expires.value));
      }
      void this.api.memory.teach(req).then(
        async () => {
          this.detail.hidden = true;
          await this.refresh();
        },
        (e: unknown) => showErrors(form, banner, failure(e)),
      );
    });
    this.open(`Edit ${m.id}`, form);
    content.focus();
  }

  private async pin(m: Memory): Promise<void> {
    try {
      await this.api.memory.teach({ userId: m.userId, namespace: m.namespace, memoryId: m.id, pinned: !m.pinned, reason: m.pinned ? "unpinned in the Inspector" : "pinned in the Inspector" });
      await this.refresh();
    } catch (e) {
      showErrors(this.el, this.banner, failure(e));
    }
  }

  private async forget(m: Memory): Promise<void> {
    try {
      await this.api.memory.forget({ memoryIds: [m.id], mode: ForgetMode.TOMBSTONE, reason: "forgotten in the Inspector" });
      await this.refresh();
    } catch (e) {
      showErrors(this.el, this.banner, failure(e));
    }
  }

  /** Purge: a dry run says what would go; the user types the user id to confirm. */
  private purgeForm(): void {
    const { user, namespace } = this.scope();
    const selector = create(ForgetSelectorSchema, { userId: user, namespace });
    const preview = h("p", { class: "preview", "aria-live": "polite" }, "Counting…");
    const confirm = h("input", { type: "text", autocomplete: "off" });
    const go = h("button", { type: "submit", class: "danger", disabled: true }, "Purge for good");
    const banner = h("div", { class: "banner", role: "alert" });
    confirm.addEventListener("input", () => { go.disabled = confirm.value !== user; });
    const form = h("form", { novalidate: true, "aria-label": "Purge" },
      preview,
      field(`Type the user id (${user}) to confirm`, "confirm", confirm),
      banner,
      go,
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (confirm.value !== user) return;
      void this.api.memory.forget({ selector, mode: ForgetMode.PURGE }).then(
        async (r) => {
          fill(preview, `Purged ${r.memories} memories, ${r.versions} versions, ${r.episodes} episodes.`);
          go.disabled = true;
          this.loadedKey = "";
          await this.refresh();
        },
        (e: unknown) => showErrors(form, banner, failure(e)),
      );
    });
    this.open(`Purge ${user} in ${namespace}`, form);
    void this.api.memory.forget({ selector, mode: ForgetMode.PURGE, dryRun: true }).then(
      (r) => fill(preview, `A purge would erase ${r.memories} memories, ${r.versions} versions, ${r.edges} edges and ${r.episodes} episodes. It cannot be undone.`),
      (e: unknown) => showErrors(form, banner, failure(e)),
    );
  }
}

/** A Date as a datetime-local input's value. */
export function localInput(d: Date): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
