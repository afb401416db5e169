// "Why did it recall that?": Recall with every score component, the provenance of each item,
// and the packed context exactly as a prompt gets it; Conscious the same way.
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { failure, type Api } from "./api";
import { clearErrors, field, fill, h, showErrors } from "./dom";
import { KINDS, kindLabel, num, when } from "./format";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { RecallItem, RecallRequestSchema } from "./gen/memoire/v1/memory_pb";
import { ConsciousSource } from "./gen/memoire/v1/memory_pb";
import type { Memory, MemoryKind } from "./gen/memoire/v1/types_pb";
import type { Scope } from "./memory";

/** Where a recalled item's provenance leads: the memory's history, or the turn's session. */
export interface Navigate {
  memory(m: Memory): void;
  session(sessionId: string): void;
}

export function recallPlayground(api: Api, scope: () => Scope, nav: Navigate): HTMLElement {
  const query = h("textarea", { rows: 2, placeholder: "Where does the user live?" });
  const k = h("input", { type: "number", min: 1, step: 1, value: 10 });
  const budget = h("input", { type: "number", min: 1, step: 1, value: 512 });
  const asOf = h("input", { type: "datetime-local" });
  const kind = h("select", {}, h("option", { value: "" }, "All kinds"), KINDS.map((kd) => h("option", { value: String(kd) }, kindLabel(kd))));
  const episodes = h("select", {}, h("option", { value: "" }, "default (yes)"), h("option", { value: "true" }, "yes"), h("option", { value: "false" }, "no: memories only"));
  const superseded = h("input", { type: "checkbox" });
  const banner = h("div", { class: "banner", role: "alert" });
  const results = h("div", { class: "results", "aria-live": "polite" });
  const form = h("form", { novalidate: true, class: "playground-form", "aria-label": "Recall" },
    field("Query", "query", query),
    h("div", { class: "row" },
      field("Items (k)", "k", k),
      field("Token budget", "token_budget", budget),
      field("As of (local time)", "filter.as_of", asOf),
      field("Kind", "filter.kinds", kind),
      field("Conversation turns", "include_episodes", episodes),
    ),
    h("label", { class: "inline" }, superseded, " include superseded"),
    banner,
    h("button", { type: "submit" }, "Recall"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const { user, namespace } = scope();
    const req: MessageInitShape<typeof RecallRequestSchema> = {
      userId: user,
      namespaces: [namespace],
      query: query.value,
      k: k.value === "" ? 0 : Number(k.value),
      tokenBudget: budget.value === "" ? 0 : Number(budget.value),
      explain: true,
      filter: {
        kinds: kind.value ? [Number(kind.value) as MemoryKind] : [],
        includeSuperseded: superseded.checked,
        asOf: asOf.value ? timestampFromDate(new Date(asOf.value)) : undefined,
      },
    };
    if (episodes.value) req.includeEpisodes = episodes.value === "true";
    clearErrors(form, banner);
    api.memory.recall(req).then(
      (r) => fill(results,
        h("p", {}, `${r.items.length} items · context ${r.contextTokens} tokens${r.truncated ? " (truncated to the budget)" : ""} · query embedded with ${r.embeddingModel}`),
        h("table", { class: "explain" },
          h("caption", {}, "Items, best first, with the components of their score"),
          h("thead", {}, h("tr", {}, ["#", "item", "final", "fused", "text (rank)", "vector (rank)", "context", "importance", "recency", "confidence", "provenance"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, r.items.map((item, i) => row(item, i + 1, nav))),
        ),
        h("h3", {}, "Packed context (what the prompt gets)"),
        h("pre", { class: "prompt", tabindex: 0 }, r.context || "(empty)"),
      ),
      (e: unknown) => showErrors(form, banner, failure(e)),
    );
  });
  return h("section", { class: "pane", "aria-labelledby": "recall-title" }, h("h2", { id: "recall-title" }, "Why did it recall that?"), form, results);
}

function row(item: RecallItem, rank: number, nav: Navigate): HTMLElement {
  const x = item.explain;
  let what: (Node | string)[] = [];
  let provenance: (Node | string)[] = [];
  if (item.item.case === "memory") {
    const m = item.item.value;
    what = [h("span", { class: "badge" }, kindLabel(m.kind)), " ", m.content, m.slot ? h("code", {}, ` ${m.slot}`) : ""];
    provenance = [
      h("button", { type: "button", class: "link", onclick: () => nav.memory(m) }, "history"),
      m.sourceEpisodeIds.length ? ` · from turns ${m.sourceEpisodeIds.join(", ")}` : " · taught",
    ];
  } else if (item.item.case === "episode") {
    const ep = item.item.value;
    what = [h("span", { class: "badge" }, "turn"), " ", ep.content];
    provenance = [
      h("button", { type: "button", class: "link", onclick: () => nav.session(ep.sessionId) }, `session ${ep.sessionId}`),
      ` · ${when(ep.occurredAt)} · episode ${ep.id}`,
    ];
  }
  return h("tr", {},
    h("td", {}, String(rank)),
    h("td", {}, what),
    h("td", {}, num(item.score)),
    h("td", {}, num(x?.fused)),
    h("td", {}, `${num(x?.textScore)} (${x?.textRank || "–"})`),
    h("td", {}, `${num(x?.vectorScore)} (${x?.vectorRank || "–"})`),
    h("td", {}, num(x?.context)),
    h("td", {}, num(x?.importance)),
    h("td", {}, num(x?.recency)),
    h("td", {}, num(x?.confidence)),
    h("td", { class: "provenance" }, provenance),
  );
}

export function consciousPlayground(api: Api, scope: () => Scope & { session: string }): HTMLElement {
  const session = h("input", { type: "text" });
  const budget = h("input", { type: "number", min: 1, step: 1, value: 512 });
  const banner = h("div", { class: "banner", role: "alert" });
  const results = h("div", { class: "results", "aria-live": "polite" });
  const form = h("form", { novalidate: true, "aria-label": "Conscious" },
    h("div", { class: "row" },
      field("Session (empty: the chat's session)", "session_id", session),
      field("Token budget", "token_budget", budget),
    ),
    banner,
    h("button", { type: "submit" }, "Load working memory"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const s = scope();
    clearErrors(form, banner);
    api.memory.conscious({ userId: s.user, namespace: s.namespace, sessionId: session.value || s.session, tokenBudget: budget.value === "" ? 0 : Number(budget.value) }).then(
      (r) => fill(results,
        h("p", {}, `Served from ${r.source === ConsciousSource.REDIS ? "Redis (working-memory cache)" : "Postgres"} · ${r.contextTokens} tokens${r.truncated ? " (truncated)" : ""}`),
        h("h3", {}, "Essential memories"),
        h("ul", {}, r.essential.map((m) => h("li", {}, h("span", { class: "badge" }, kindLabel(m.kind)), " ", m.content, m.slot ? h("code", {}, ` ${m.slot}`) : ""))),
        h("h3", {}, "The session's episodes (recent turns, oldest first)"),
        h("ol", {}, r.recent.map((ep) => h("li", {}, `${when(ep.occurredAt)} · ${ep.name || "user"}: ${ep.content}`))),
        h("h3", {}, "Packed working memory"),
        h("pre", { class: "prompt", tabindex: 0 }, r.context || "(empty)"),
      ),
      (e: unknown) => showErrors(form, banner, failure(e)),
    );
  });
  return h("section", { class: "pane", "aria-labelledby": "conscious-title" }, h("h2", { id: "conscious-title" }, "Conscious"), form, results);
}
