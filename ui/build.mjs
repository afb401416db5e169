// Bundles the Inspector into dist/ (index.html, app.js, app.css, and a gzip copy of each, which
// the server sends to browsers that accept it), which app/build.rs embeds in memoire-server.
// Prints the bundle's size.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { constants, gzipSync } from "node:zlib";

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
  const zipped = gzipSync(readFileSync(`dist/${f}`), { level: constants.Z_BEST_COMPRESSION });
  writeFileSync(`dist/${f}.gz`, zipped);
  gz += zipped.length;
}
// Written last: scripts/ui.sh compares the sources with it, so an interrupted build is redone.
writeFileSync("dist/.built", `${new Date().toISOString()}\n`);
console.log(`ui: dist/ ${(raw / 1024).toFixed(1)} KiB (${(gz / 1024).toFixed(1)} KiB gzipped)`);
