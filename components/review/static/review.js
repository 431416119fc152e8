// Keyboard shortcuts of the review page: a accept, c current is right, s skip, p the path picker, u undo.
// Nothing else: the page works without this file (every action is a plain form button).
document.addEventListener("keydown", (ev) => {
  // Enter in the path picker uses that path (the form's first button, Accept, would otherwise answer it).
  if (ev.key === "Enter" && ev.target.id === "path") {
    ev.preventDefault();
    document.getElementById("pick").click();
    return;
  }
  const typing = ev.target.closest("input, textarea, select");
  if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key.toLowerCase();
  if (key === "p") {
    const picker = document.getElementById("path");
    if (picker) { ev.preventDefault(); picker.focus(); }
    return;
  }
  if (key === "u") {
    const undo = document.getElementById("undo-form");
    if (undo) { ev.preventDefault(); undo.submit(); }
    return;
  }
  const button = document.querySelector(`#decide button[data-key="${key}"]`);
  if (button) { ev.preventDefault(); button.click(); }
});
