// Keyboard shortcuts on the session page. Everyone: Esc stops following a driver. A
// controller also has Space (play/pause), ←/→ (seek 5 s back/forward) and [ / ] (slower /
// faster). Keys typed into a field or a focused button act there, not here.

const SEEK_SECONDS = 5;

export function setUpKeys({ release, control }) {
  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const target = event.target;
    const typing = target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
    if (event.key === "Escape") {
      release();
      return;
    }
    if (typing || !control.enabled()) return;
    switch (event.key) {
      case " ":
        // A focused button handles Space itself.
        if (target instanceof HTMLButtonElement || target.tagName === "TR") return;
        control.playPause();
        break;
      case "ArrowLeft":
        control.seekBy(-SEEK_SECONDS);
        break;
      case "ArrowRight":
        control.seekBy(SEEK_SECONDS);
        break;
      case "[":
        control.speedStep(-1);
        break;
      case "]":
        control.speedStep(1);
        break;
      default:
        return;
    }
    event.preventDefault();
  });
}
