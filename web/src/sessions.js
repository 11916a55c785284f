// The home page: the sessions playing on this hub (race, viewers, play state) and the races it
// has (name, circuit, laps, drivers). With the admin token, entered once and kept in this tab's
// sessionStorage, a race can start a new session; the hub's answer gives the watch link (for
// anyone) and the control link (it carries the session's control token) to share.
const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "replay-hub:admin-token";

let races = [];

function adminToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch (_) {
    return "";
  }
}

function setAdminToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) {}
  showAdmin();
}

function showAdmin() {
  const has = Boolean(adminToken());
  $("admin-token").value = "";
  $("admin-token").placeholder = has ? "token kept in this tab" : "to start sessions; kept in this tab only";
  $("admin-forget").hidden = !has;
  $("admin-state").textContent = has ? "Sessions can be started." : "";
  $("admin-state").className = "muted";
  document.body.dataset.admin = String(has);
  renderRaces();
}

// "Generated Grand Prix · Autodromo Nazionale Monza" → name and circuit.
function split(name) {
  const at = name.lastIndexOf(" · ");
  return at < 0 ? [name, ""] : [name.slice(0, at), name.slice(at + 3)];
}

function minutes(frames) {
  return `${Math.round(frames / 25 / 60)} min`;
}

function text(tag, content, className) {
  const node = document.createElement(tag);
  node.textContent = content;
  if (className) node.className = className;
  return node;
}

function link(href, content) {
  const a = text("a", content);
  a.href = href;
  return a;
}

function renderSessions(sessions) {
  const names = Object.fromEntries(races.map((race) => [race.id, race.name]));
  $("empty").hidden = sessions.length > 0;
  $("sessions").replaceChildren(
    ...sessions.map((s) => {
      const item = document.createElement("li");
      item.className = "card";
      item.dataset.session = s.id;
      const title = document.createElement("h3");
      title.append(link(`/sessions/${encodeURIComponent(s.id)}`, s.id));
      const [race, circuit] = split(names[s.race] || s.race);
      const playing = s.state.playing ? `▶ playing at ${s.state.speed}×` : "❚❚ paused";
      item.append(
        title,
        text("p", circuit ? `${race} · ${circuit}` : race),
        text("p", `${s.viewers} watching · ${playing}${s.loop ? " · loops" : ""}`),
      );
      return item;
    }),
  );
}

function renderRaces() {
  $("no-races").hidden = races.length > 0;
  const admin = Boolean(adminToken());
  $("races").replaceChildren(
    ...races.map((race) => {
      const item = document.createElement("li");
      item.className = "card";
      item.dataset.race = race.id;
      const [name, circuit] = split(race.name);
      item.append(text("h3", name));
      if (circuit) item.append(text("p", circuit));
      item.append(text("p", `${race.laps} laps · ${race.drivers} drivers · ${minutes(race.total_frames)} · id ${race.id}`));
      if (admin) item.append(createForm(race));
      return item;
    }),
  );
}

function createForm(race) {
  const form = document.createElement("form");
  form.className = "actions";
  const id = document.createElement("input");
  id.type = "text";
  id.placeholder = "session id (optional)";
  id.setAttribute("aria-label", `Session id for ${race.name}`);
  id.pattern = "[a-z0-9_-]{1,64}";
  const loopLabel = document.createElement("label");
  const loop = document.createElement("input");
  loop.type = "checkbox";
  loopLabel.append(loop, " loop");
  const start = text("button", "Start a session");
  start.type = "submit";
  const result = document.createElement("div");
  form.append(id, loopLabel, start, result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    start.disabled = true;
    try {
      const body = { race: race.id, loop: loop.checked };
      if (id.value.trim()) body.id = id.value.trim();
      const response = await fetch("/api/sessions", {
        method: "POST",
        headers: { Authorization: `Bearer ${adminToken()}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const answer = await response.json().catch(() => ({}));
      if (response.status === 401) {
        // A wrong token is forgotten, and the form says why.
        setAdminToken("");
        $("admin-state").textContent = "The hub refused that admin token.";
        $("admin-state").className = "error";
        return;
      }
      if (!response.ok) throw new Error(answer.message || `the hub answered ${response.status}`);
      result.className = "created";
      result.replaceChildren(
        text("div", "Started. Share these links:"),
        text("div", "Watch: "),
        text("div", "Control (keep it to yourself): "),
      );
      result.children[1].append(link(answer.watch_url, answer.watch_url));
      result.children[2].append(link(answer.control_page_url, answer.control_page_url));
      result.children[1].firstElementChild.id = "watch-link";
      result.children[2].firstElementChild.id = "control-link";
      refresh();
    } catch (error) {
      result.className = "error";
      result.textContent = `Could not start it: ${error.message}`;
    } finally {
      start.disabled = false;
    }
  });
  return form;
}

async function refresh() {
  try {
    const [sessions, list] = await Promise.all([
      fetch("/api/sessions").then((r) => r.json()),
      fetch("/api/races").then((r) => r.json()),
    ]);
    const changed = JSON.stringify(list) !== JSON.stringify(races);
    races = list;
    renderSessions(sessions);
    // Re-rendered only when the races change, so a form being filled in stays as it is.
    if (changed) renderRaces();
  } catch (_) {
    $("empty").hidden = false;
    $("empty").textContent = "The hub did not answer.";
  }
}

$("admin").addEventListener("submit", (event) => {
  event.preventDefault();
  setAdminToken($("admin-token").value.trim());
});
$("admin-forget").addEventListener("click", () => setAdminToken(""));
showAdmin();
refresh();
setInterval(refresh, 5000);
