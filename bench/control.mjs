// Sends one control command to a session and waits for the hub's `state` in answer.
//
//   node --experimental-websocket bench/control.mjs WS_CONTROL_URL '{"cmd":"speed","value":4}'
//
// (Node 22 and later have WebSocket without the flag.) Prints the state; exits 1 on an error.
const [url, command] = process.argv.slice(2);
if (!url || !command) {
  console.error("usage: control.mjs WS_CONTROL_URL COMMAND_JSON");
  process.exit(2);
}
const ws = new WebSocket(url);
const sent = JSON.parse(command);
let hello = false;
const timer = setTimeout(() => {
  console.error("no answer in 10 s");
  process.exit(1);
}, 10000);
ws.onmessage = (event) => {
  if (typeof event.data !== "string") return;
  const message = JSON.parse(event.data);
  if (message.type === "hello") {
    hello = true;
    ws.send(JSON.stringify(sent));
  } else if (message.type === "error") {
    console.error(`${message.code}: ${message.message}`);
    process.exit(1);
  } else if (message.type === "state" && hello) {
    console.log(JSON.stringify(message));
    clearTimeout(timer);
    ws.close();
  }
};
ws.onerror = () => {
  console.error(`cannot connect to ${url}`);
  process.exit(1);
};
