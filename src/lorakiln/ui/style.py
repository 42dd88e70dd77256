"""The page's CSS and script: compact fields, help behind an info icon, the config key as a
tooltip, a log that follows its end, and samples shown whole.

gradio prints a component's `info` as a paragraph under its label, which turned the Train tab
into a 13,770-px page of schema prose. Every Train field carries the class `lk-field` and an
elem_id `cfg-<section>-<name>`; the CSS hides the paragraph and the script puts it behind an
"ⓘ" icon (its `title`) and the config key on the label (`title`), as the kohya_ss GUI shows
its help on hover. Other components opt in with the class `lk-help` (help icon, no key). The same script keeps the training log scrolled to its end unless the user
scrolled up to read, as a terminal does.
"""

from __future__ import annotations

CSS = """
.lk-field .info-text, .lk-help .info-text { display: none; }
/* an "i" in a circle, drawn by CSS (not text: a label's text stays its label; no font needed) */
.lk-info::after { content: "i"; display: inline-block; width: 1.2em; height: 1.2em; line-height: 1.2em;
                  border: 1px solid currentColor; border-radius: 50%; text-align: center; font-size: 0.75em;
                  font-style: italic; font-family: serif; }
.lk-info { cursor: help; color: var(--body-text-color-subdued); margin-left: 0.4em; font-weight: normal; }
#run-status { min-height: 2.4em; padding: 0.4em 0.8em; border-radius: var(--radius-md);
              background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
#run-status.lk-failed, #run-status:has(.lk-failed) { border-color: var(--error-border-color); }
#train-samples img, #test-images img { image-rendering: pixelated; object-fit: contain; }
.lk-error { color: var(--error-text-color, #b91c1c); font-size: 0.85em; font-weight: 600; margin: 0.2em 0; }
.lk-invalid input, .lk-invalid textarea { border-color: var(--error-border-color, #ef4444) !important; }
#train-steps textarea { font-family: var(--font-mono); font-size: 0.85em; }
"""

#: Runs in the page's <head>: decorates fields as gradio renders them (tabs render lazily).
HEAD = r"""
<script>
(() => {
  const keyOf = (id) => id.replace(/^cfg-/, "").replace("-", ".");
  function decorate() {
    // idempotent, on every mutation: gradio re-renders a label when a value or prop changes
    document.querySelectorAll(".lk-field, .lk-help").forEach((block) => {
      const label = block.querySelector('[data-testid="block-info"], .label-text');
      if (!label) return;
      const key = block.classList.contains("lk-field") ? keyOf(block.id) : "";
      const tail = key ? "\n\nconfig key: " + key : "";
      if (key && label.title !== "config key: " + key) label.title = "config key: " + key;
      const info = block.querySelector(".info-text");
      if (info && info.textContent.trim() && !label.querySelector(".lk-info")) {
        const icon = document.createElement("span");
        icon.className = "lk-info";
        icon.title = info.textContent.trim() + tail;
        icon.setAttribute("aria-label", icon.title);
        icon.addEventListener("click", (e) => e.preventDefault());  // inside a checkbox's label: no toggle
        label.appendChild(icon);
      }
    });
    const log = document.querySelector("#train-log textarea");
    if (log && !log.dataset.lk) {
      log.dataset.lk = "1";
      log.dataset.pinned = "1";
      const unpin = () => setTimeout(() => {
        log.dataset.pinned = log.scrollHeight - log.scrollTop - log.clientHeight < 24 ? "1" : "0";
      }, 50);
      ["wheel", "mousedown", "keydown", "touchmove"].forEach((e) => log.addEventListener(e, unpin));
    }
  }
  function follow() {
    const log = document.querySelector("#train-log textarea");
    if (log && log.dataset.pinned !== "0") log.scrollTop = log.scrollHeight;
  }
  new MutationObserver(decorate).observe(document.documentElement, { childList: true, subtree: true });
  setInterval(follow, 500);
})();
</script>
"""

#: A gradio `js` step after Start: `errors` is {element id: message}. Each message goes under its
#: field's label (the field's border turns red) and stays until that field is edited or the
#: next Start; the first marked field is scrolled into view.
SHOW_ERRORS = r"""
(errors) => {
  document.querySelectorAll(".lk-error").forEach((e) => e.remove());
  document.querySelectorAll(".lk-invalid").forEach((e) => e.classList.remove("lk-invalid"));
  let first = null;
  for (const [id, message] of Object.entries(errors || {})) {
    const block = document.getElementById(id);
    if (!block) continue;
    const note = document.createElement("div");
    note.className = "lk-error";
    note.setAttribute("role", "alert");
    note.textContent = message;
    const label = block.querySelector('[data-testid="block-info"], .label-text');
    (label ? label.parentElement : block).insertBefore(note, label ? label.nextSibling : null);
    block.classList.add("lk-invalid");
    const clear = () => { note.remove(); block.classList.remove("lk-invalid"); };
    block.addEventListener("input", clear, { once: true });
    block.addEventListener("change", clear, { once: true });
    first = first || block;
  }
  if (first) first.scrollIntoView({ block: "nearest" });
  return [];
}
"""
