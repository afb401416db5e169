// Chat with memory: each turn is ingested (waiting for extraction), the memory pane refreshes,
// and the prompt the next model call would get is built exactly as the SDK's wrap() builds it:
// the memory block (Conscious, then Recall) as a system message before the user's message.
import { failure, type Api } from "./api";
import { field, fill, h, showErrors } from "./dom";
import { ExtractionState } from "./gen/memoire/v1/memory_pb";
import { MessageRole } from "./gen/memoire/v1/types_pb";
import type { MemoryPane, ReadOnly, Scope } from "./memory";

/** The header of the memory block, the same words as the Python SDK's `wrap()`. */
export const MEMORY_HEADER = "Relevant memories about the user (from Mémoire; each line ends with its id):";

export class ChatPane {
  readonly el: HTMLElement;
  private readonly log = h("ol", { class: "chat-log", "aria-label": "Conversation", "aria-live": "polite" });
  private readonly input = h("textarea", { rows: 2, placeholder: "Say something about yourself…" });
  private readonly prompt = h("pre", { class: "prompt", "aria-label": "System prompt", tabindex: 0 });
  private readonly banner = h("div", { class: "banner", role: "alert" });
  private turns = 0;

  constructor(
    private readonly api: Api,
    private readonly scope: () => Scope & { session: string },
    private readonly memory: MemoryPane,
    readOnly: ReadOnly,
  ) {
    const send = h("button", { type: "submit", disabled: readOnly !== null, title: readOnly ?? undefined, "aria-describedby": readOnly ? "readonly-note" : undefined }, "Send");
    const form = h("form", { novalidate: true, class: "chat-form", "aria-label": "Chat" },
      field("Message", "messages[0].content", this.input, "Enter sends; Shift+Enter adds a line."),
      this.banner,
      send,
    );
    this.input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) {
        ev.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (readOnly === null) void this.send(form);
    });
    this.el = h("section", { class: "pane chat-pane", "aria-labelledby": "chat-title" },
      h("div", { class: "pane-head" },
        h("h2", { id: "chat-title" }, "Chat"),
        h("button", { type: "button", onclick: () => void this.showPrompt(this.lastMessage) }, "Rebuild prompt"),
      ),
      this.log,
      form,
      h("h3", {}, "The prompt the model receives"),
      h("p", { class: "hint" }, "No model is called from here: this is exactly what a wrapped client would send, memory included."),
      this.prompt,
    );
  }

  private lastMessage = "";

  private async send(form: HTMLFormElement): Promise<void> {
    const content = this.input.value.trim();
    if (!content) return;
    const { user, namespace, session } = this.scope();
    this.turns += 1;
    const entry = h("li", { class: "turn user" }, h("span", { class: "who" }, "You"), h("span", {}, content), h("span", { class: "state" }, " · remembering…"));
    this.log.append(entry);
    try {
      const r = await this.api.memory.ingest({
        userId: user,
        namespace,
        sessionId: session,
        messages: [{ role: MessageRole.USER, content, messageId: `inspector-${crypto.randomUUID()}` }],
        waitForExtraction: true,
        waitTimeout: { seconds: BigInt(10), nanos: 0 },
      });
      fill(entry.querySelector(".state")!, ` · ${extractionLabel(r.extraction)}`);
      this.input.value = "";
    } catch (e) {
      entry.remove();
      showErrors(form, this.banner, failure(e));
      return;
    }
    this.lastMessage = content;
    // The refresh rebuilds the prompt (main.ts wires the pane's onRefresh to it).
    await this.memory.refresh();
  }

  /** Builds the prompt for the last message from the memory as it is now. */
  rebuild(): Promise<void> {
    return this.showPrompt(this.lastMessage);
  }

  /** Builds the prompt for `message` from the memory as it is now. */
  async showPrompt(message: string): Promise<void> {
    const { user, namespace, session } = this.scope();
    try {
      const [conscious, recalled] = await Promise.all([
        this.api.memory.conscious({ userId: user, namespace, sessionId: session, tokenBudget: 1024 }),
        message
          ? this.api.memory.recall({ userId: user, namespaces: [namespace], query: message, k: 10, tokenBudget: 1024 })
          : Promise.resolve({ context: "" }),
      ]);
      const parts = [conscious.context.trim(), recalled.context.trim()].filter((p) => p);
      const block = parts.length ? `${MEMORY_HEADER}\n${parts.join("\n")}` : "(no memory yet: the model gets no system message from Mémoire)";
      fill(this.prompt, `[system]\n${block}\n\n[user]\n${message || "(your next message)"}`);
    } catch (e) {
      showErrors(this.el, this.banner, failure(e));
    }
  }
}

function extractionLabel(s: ExtractionState): string {
  switch (s) {
    case ExtractionState.COMPLETED: return "remembered";
    case ExtractionState.QUEUED: return "queued for extraction";
    case ExtractionState.TIMED_OUT: return "extraction still running";
    case ExtractionState.FAILED: return "extraction failed (see dead letters)";
    default: return "";
  }
}
