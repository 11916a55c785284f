// Builds dist/: the scripts, bundled (the worker with its msgpack decoder). The hub embeds them,
// and the pages and styles straight from src/, so the output is committed; CI checks that it is
// what src/ builds to.
import { build } from "esbuild";
import { mkdirSync } from "node:fs";

const common = { bundle: true, format: "esm", target: "es2020", minify: true, outdir: "dist", logLevel: "warning" };
mkdirSync("dist", { recursive: true });
await build({ ...common, entryPoints: ["src/app.js", "src/sessions.js"] });
await build({
  ...common,
  entryPoints: ["src/worker.js"],
  banner: { js: "/* replay-hub viewer worker. Bundles @msgpack/msgpack (ISC license), declared in web/package.json. */" },
});
