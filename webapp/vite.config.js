// Vite build of Parley's browser app. The node serves webapp/dist itself under a strict
// Content-Security-Policy (own origin only, no inline script, no eval), so: templates are
// precompiled by @vitejs/plugin-vue (Vue's runtime compiler would need eval), nothing is
// loaded from a CDN, and no asset is inlined as a data: URL or inline <script>/<style>.
import { defineConfig } from "vite";
import vue from "@vitejs/plugin-vue";

export default defineConfig({
  plugins: [vue()],
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    assetsInlineLimit: 0,
    sourcemap: false,
    // One small app: a single chunk keeps the page to three requests.
    chunkSizeWarningLimit: 400,
  },
  define: {
    __VUE_OPTIONS_API__: "false",
    __VUE_PROD_DEVTOOLS__: "false",
    __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: "false",
  },
});
