// Chat with memory, through the Chat RPC: the server stores each message (waiting for its
// extraction), builds the prompt a wrapped client would send from the memory as it then is, and
// asks its chat model when it has one (`chat_model`). Without one, the pane shows the prompt the
// model would receive. After every change to the memory the prompt is rebuilt (a dry run).
import { failure, type Api } from "./api";
import { field, fill, h, showErrors } from "./dom";
import { ExtractionState, type PromptMessage } from "./gen/memoire/v1/memory_pb";
import { MessageRole } from "./gen/memoire/v1/types_pb";
import type { MemoryPane, ReadOnly, Scope } from "./memory";

export class ChatPane {
  readonly el: HTMLElement;
  private readonly log = h("ol", { class: "chat-log", "aria-label": "Conversation", "aria-live": "polite" });
  private readonly input = h("textarea", { rows: 2, placeholder: "Say something about yourself…" });
  private readonly prompt = h("pre", { class: "prompt", "aria-label": "Prompt", tabindex: 0 }, "(send a message to see the prompt)");
  private readonly banner = h("div", { class: "banner", role: "alert" });
  private lastMessage = "";
  private holdPrompt = false;

  constructor(
    private readonly api: Api,
    private readonly scope: () => Scope & { session: string },
    private readonly memory: MemoryPane,
    readOnly: ReadOnly,
  ) {
    const send = h("button", { type: "submit", disabled: readOnly !== null, title: readOnly ?? undefined, "aria-describedby": readOnly ? "readonly-note" : undefined }, "Send");
    const form = h("form", { novalidate: true, class: "chat-form", "aria-label": "Chat" },
      field("Message", "content", this.input, "Enter sends; Shift+Enter adds a line."),
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
        h("button", { type: "button", onclick: () => void this.rebuild() }, "Rebuild prompt"),
      ),
      this.log,
      form,
      h("h3", {}, "The prompt the model receives"),
      h("p", { class: "hint" }, "Built by the server exactly as a wrapped client sends it: the memory block, then the message."),
      this.prompt,
    );
  }

  private async send(form: HTMLFormElement): Promise<void> {
    const content = this.input.value.trim();
    const { user, namespace, session } = this.scope();
    const entry = h("li", { class: "turn user" }, h("span", { class: "who" }, "You"), h("span", {}, content), h("span", { class: "state" }, " · remembering…"));
    this.log.append(entry);
    try {
      const r = await this.api.memory.chat({
        userId: user,
        namespace,
        sessionId: session,
        content,
        messageId: `inspector-${crypto.randomUUID()}`,
        waitTimeout: { seconds: BigInt(10), nanos: 0 },
      });
      fill(entry.querySelector(".state")!, ` · ${extractionLabel(r.extraction)}`);
      this.log.append(r.reply
        ? h("li", { class: "turn assistant" }, h("span", { class: "who" }, r.model), h("span", {}, r.reply))
        : h("li", { class: "turn assistant offline" }, h("span", { class: "who" }, "No model"), h("span", {}, "The server has no chat model (chat_model): below is the prompt one would receive.")));
      this.input.value = "";
      this.lastMessage = content;
      this.showPrompt(r.prompt);
    } catch (e) {
      entry.remove();
      showErrors(form, this.banner, failure(e));
      return;
    }
    // The pane shows what the model received: the refresh that follows must not rebuild it.
    this.holdPrompt = true;
    try {
      await this.memory.refresh();
    } finally {
      this.holdPrompt = false;
    }
  }

  /** The prompt for the last message from the memory as it is now (a dry run: nothing stored). */
  async rebuild(): Promise<void> {
    if (!this.lastMessage || this.holdPrompt) return;
    const { user, namespace, session } = this.scope();
    try {
      const r = await this.api.memory.chat({ userId: user, namespace, sessionId: session, content: this.lastMessage, dryRun: true });
      this.showPrompt(r.prompt);
    } catch (e) {
      showErrors(this.el, this.banner, failure(e));
    }
  }

  private showPrompt(prompt: PromptMessage[]): void {
    fill(this.prompt, prompt.map((m) => `[${MessageRole[m.role].toLowerCase()}]\n${m.content}`).join("\n\n"));
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
