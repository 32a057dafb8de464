// The Images page: `npm ci && npm run build` writes dist/, which is committed and
// shipped in the wheel (setup.py), so the daemon serves it without node.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    // one script and one stylesheet, no inline code: the CSP allows 'self' only
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
});
