// Bundles the Inspector into dist/ (index.html, app.js, app.css), which app/build.rs embeds in
// memoire-server. Prints the bundle's size.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { readFileSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist");
await build({
  entryPoints: { app: "src/main.ts" },
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  outdir: "dist",
  legalComments: "none",
  logLevel: "warning",
});
copyFileSync("src/app.css", "dist/app.css");
copyFileSync("index.html", "dist/index.html");
let raw = 0;
let gz = 0;
for (const f of ["index.html", "app.js", "app.css"]) {
  raw += statSync(`dist/${f}`).size;
  gz += gzipSync(readFileSync(`dist/${f}`)).length;
}
console.log(`ui: dist/ ${(raw / 1024).toFixed(1)} KiB (${(gz / 1024).toFixed(1)} KiB gzipped)`);
