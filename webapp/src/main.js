// Entry point. The node serves this build under a CSP without 'unsafe-eval': the
// templates were compiled to render functions by Vite, so only Vue's runtime ships.
import { createApp } from "vue";
import App from "./App.vue";
import { startRouter } from "./router.js";
import "./style.css";

// If the app was opened with the printed URL while already signed in, the token is
// still in the fragment: take it out of the address bar and the history.
if (/(?:^#|&)token=/.test(window.location.hash)) {
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
}

startRouter();
createApp(App).mount("#app");
