#!/usr/bin/env bash
# Builds the Memory Inspector (ui/) into ui/dist, which app/build.rs embeds in memoire-server:
# installs the locked npm packages when ui/package-lock.json changed, generates the TypeScript
# client from proto/ (buf + protoc-gen-es), type-checks, bundles (esbuild). Quick and quiet when
# nothing changed since the last build. Needs Node.js >= 18 and npm (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../ui"

die() { printf 'ui: error: %s\n' "$*" >&2; exit 1; }
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
  || die "node and npm are needed to build the Inspector: run scripts/setup.sh (or install Node.js >= 18)"
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 18 ] || die "Node.js $(node --version) found; the Inspector's build needs 18 or newer"

stamp=node_modules/.memoire-package-lock.json
if ! cmp -s package-lock.json "$stamp"; then
  echo "ui: installing npm packages (package-lock.json)" >&2
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  cp package-lock.json "$stamp"
fi

# Rebuild only when a source is newer than the last complete build (ui/build.mjs writes
# dist/.built last, so an interrupted build is redone).
if [ -f dist/.built ] && [ -z "$(find src index.html build.mjs buf.gen.yaml tsconfig.json package.json package-lock.json \
     proto ../proto ../scripts/ui.sh -newer dist/.built -not -path 'src/gen/*' -print -quit)" ]; then
  exit 0
fi
npm run --silent build
