// The tenant's users (ListUsers) and one session's turns (ListEpisodes), page by page.
import { failure, type Api } from "./api";
import { clearErrors, field, fill, h, showErrors } from "./dom";
import { when } from "./format";
import { MessageRole } from "./gen/memoire/v1/types_pb";
import type { Scope } from "./memory";

/** Users, by id, with counts; "Open" shows one user's memory. */
export function usersView(api: Api, scope: () => Scope, open: (user: string) => void): HTMLElement {
  const body = h("tbody", {});
  const banner = h("div", { class: "banner", role: "alert" });
  const more = h("button", { type: "button", hidden: true }, "Load more");
  const onlyNamespace = h("input", { type: "checkbox" });
  const root = h("section", { class: "pane", "aria-labelledby": "users-title" });
  // A page token holds only for the filter it came with; a reply to an older listing is dropped.
  let token = "";
  let namespace: string | undefined;
  let generation = 0;
  const load = async (reset: boolean) => {
    if (reset) {
      token = "";
      namespace = onlyNamespace.checked ? scope().namespace : undefined;
      generation += 1;
      body.replaceChildren();
    }
    const mine = generation;
    try {
      const page = await api.memory.listUsers({ namespace, pageSize: 100, pageToken: token });
      if (mine !== generation) return;
      clearErrors(root, banner);
      for (const u of page.users) {
        body.append(h("tr", {},
          h("td", {}, h("code", {}, u.userId)),
          h("td", {}, String(u.activeMemories)),
          h("td", {}, String(u.episodes)),
          h("td", {}, when(u.lastActiveAt)),
          h("td", {}, h("button", { type: "button", onclick: () => open(u.userId), "aria-label": `Open ${u.userId}` }, "Open")),
        ));
      }
      if (body.children.length === 0) body.append(h("tr", {}, h("td", { colspan: 5, class: "empty" }, "No users yet.")));
      token = page.nextPageToken;
      more.hidden = !token;
    } catch (e) {
      showErrors(root, banner, failure(e));
    }
  };
  more.addEventListener("click", () => void load(false));
  onlyNamespace.addEventListener("change", () => void load(true));
  fill(root,
    h("div", { class: "pane-head" }, h("h2", { id: "users-title" }, "Users"), h("label", { class: "inline" }, onlyNamespace, " only this namespace")),
    banner,
    h("table", {},
      h("caption", {}, "Everyone with memories or conversation turns in this tenant"),
      h("thead", {}, h("tr", {}, ["user", "active memories", "turns", "last active", ""].map((c) => h("th", { scope: "col" }, c)))),
      body,
    ),
    more,
  );
  void load(true);
  return root;
}

/** One session's turns, in the order they were said. */
export function episodesView(api: Api, scope: () => Scope & { session: string }): HTMLElement {
  const session = h("input", { type: "text" });
  session.value = scope().session;
  const list = h("ol", { class: "episodes", "aria-live": "polite" });
  const banner = h("div", { class: "banner", role: "alert" });
  const more = h("button", { type: "button", hidden: true }, "Load more");
  // As for users: the listing a page token belongs to, and a reply to an older one is dropped.
  let token = "";
  let listing = { user: "", namespace: "", session: "" };
  let generation = 0;
  const form = h("form", { novalidate: true, "aria-label": "Session" },
    field("Session", "session_id", session),
    banner,
    h("button", { type: "submit" }, "Show turns"),
  );
  const load = async (reset: boolean) => {
    if (reset) {
      token = "";
      const { user, namespace } = scope();
      listing = { user, namespace, session: session.value.trim() };
      generation += 1;
      list.replaceChildren();
    }
    const mine = generation;
    try {
      const page = await api.memory.listEpisodes({ userId: listing.user, namespace: listing.namespace, sessionId: listing.session, pageSize: 100, pageToken: token });
      if (mine !== generation) return;
      clearErrors(form, banner);
      for (const ep of page.episodes) {
        list.append(h("li", { "data-episode-id": ep.id },
          h("span", { class: "who" }, ep.name || (ep.role === MessageRole.ASSISTANT ? "assistant" : "user")),
          ` ${ep.content} `,
          h("small", { class: "hint" }, `${when(ep.occurredAt)} · episode ${ep.id}`),
        ));
      }
      if (list.children.length === 0) list.append(h("li", { class: "empty" }, "No turns in this session."));
      token = page.nextPageToken;
      more.hidden = !token;
    } catch (e) {
      showErrors(form, banner, failure(e));
    }
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void load(true);
  });
  more.addEventListener("click", () => void load(false));
  void load(true);
  return h("section", { class: "pane", "aria-labelledby": "episodes-title" }, h("h2", { id: "episodes-title" }, "Episodes of a session"), form, list, more);
}
