// The session list: every session on this hub with its race, viewers and play state.
const list = document.getElementById("sessions");

async function refresh() {
  const [sessions, races] = await Promise.all([
    fetch("/api/sessions").then((r) => r.json()),
    fetch("/api/races").then((r) => r.json()),
  ]);
  const names = Object.fromEntries(races.map((race) => [race.id, race.name]));
  document.getElementById("empty").hidden = sessions.length > 0;
  list.replaceChildren(
    ...sessions.map((s) => {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = `/sessions/${encodeURIComponent(s.id)}`;
      link.textContent = s.id;
      const detail = document.createElement("span");
      const playing = s.state.playing ? `playing at ${s.state.speed}×` : "paused";
      detail.textContent = ` · ${names[s.race] || s.race} · ${s.viewers} watching · ${playing}`;
      item.append(link, detail);
      return item;
    }),
  );
}

refresh();
setInterval(refresh, 5000);
