// Which driver this viewer follows: a per-viewer choice (the playhead stays shared), kept in
// the tab's sessionStorage by driver code so it survives a reconnect and a reload. Clicking
// the same car or row again, the close button or Esc releases it. Tests read
// document.body.dataset.focus (the code, or "" for none).

export function createFocus(sessionId, meta, onChange) {
  const key = `replay-hub:focus:${sessionId}`;
  let focused = -1;
  const set = (n) => {
    focused = n >= 0 && n < meta.drivers.length ? n : -1;
    const code = focused >= 0 ? meta.drivers[focused].code : "";
    try {
      if (code) sessionStorage.setItem(key, code);
      else sessionStorage.removeItem(key);
    } catch (_) {
      // Storage may be unavailable (private mode): the choice then lasts as long as the page.
    }
    document.body.dataset.focus = code;
    onChange(focused);
  };
  let saved = null;
  try {
    saved = sessionStorage.getItem(key);
  } catch (_) {}
  const restored = meta.drivers.findIndex((d) => d.code === saved);
  return {
    get: () => focused,
    // Focuses driver n, or releases it when it is the one already followed.
    toggle: (n) => set(n === focused ? -1 : n),
    clear: () => set(-1),
    restore: () => set(restored),
  };
}
