// Progressive enhancements only: every page works without JavaScript.
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy-target]")) {
    if (!navigator.clipboard) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copyTarget);
      await navigator.clipboard.writeText(source.textContent.trim());
      const original = button.textContent;
      button.textContent = button.dataset.copiedText;
      setTimeout(() => { button.textContent = original; }, 2000);
    });
  }
});
