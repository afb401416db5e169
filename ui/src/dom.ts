// A few lines of DOM building: text always goes in as text (memory content is user data).

type Child = Node | string | null | undefined | false;
type Attrs = Record<string, string | boolean | number | EventListener | undefined>;

/** An element with attributes (`on…` are listeners; `true` sets a boolean attribute). */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child);
  }
  return el;
}

/** Replaces the children of `el`. */
export function fill(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child);
  }
}

let ids = 0;
/** A unique element id (for label/aria wiring). */
export function uid(prefix: string): string {
  ids += 1;
  return `${prefix}-${ids}`;
}

/**
 * A labelled form field with a slot for the server's error about it: `errorFor(field)` finds the
 * slot by the request's field name.
 */
export function field(label: string, name: string, input: HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement, hint?: string): HTMLElement {
  const id = input.id || uid(name);
  input.id = id;
  input.name = name;
  const error = h("span", { class: "field-error", id: `${id}-error`, "data-error-for": name, role: "alert" });
  input.setAttribute("aria-describedby", `${id}-error`);
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    input,
    hint ? h("small", { class: "hint" }, hint) : null,
    error,
  );
}

/** Shows a failure: each named field's message next to its field in `form`, the rest in `banner`. */
export function showErrors(form: Element, banner: Element, f: { code: string; message: string; fields: Map<string, string> }): void {
  clearErrors(form, banner);
  let placed = 0;
  for (const [name, message] of f.fields) {
    const slot = form.querySelector<HTMLElement>(`[data-error-for="${CSS.escape(name)}"]`);
    if (slot) {
      slot.textContent = message;
      slot.closest(".field")?.querySelector("input,textarea,select")?.setAttribute("aria-invalid", "true");
      placed += 1;
    }
  }
  if (placed < f.fields.size || f.fields.size === 0) {
    banner.textContent = `${f.code}: ${f.message}`;
    banner.classList.add("visible");
  }
}

export function clearErrors(form: Element, banner: Element): void {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  banner.textContent = "";
  banner.classList.remove("visible");
}
