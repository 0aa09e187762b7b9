// Pigeon console: small progressive enhancements. The pages work without it.
"use strict";

// Elements with data-refresh="URL" are re-rendered from that URL every data-every ms, until a
// fragment marks itself final (data-final="true").
function refresh(element) {
  const every = Number(element.dataset.every || 3000);
  const tick = async () => {
    try {
      const answer = await fetch(element.dataset.refresh, {
        credentials: "same-origin",
        headers: { "x-console-fragment": "1" },
      });
      if (answer.status === 401) {
        window.location.assign("/console/login");
        return;
      }
      if (answer.ok) {
        element.innerHTML = await answer.text();
        const marker = element.querySelector("[data-final]");
        if (marker && marker.dataset.final === "true") {
          return;
        }
      }
    } catch (error) {
      // The server is restarting or the network is down: try again at the next tick.
    }
    window.setTimeout(tick, every);
  };
  const first = element.querySelector("[data-final]");
  if (!(first && first.dataset.final === "true")) {
    window.setTimeout(tick, every);
  }
}

// Forms with data-confirm="question" ask before they are sent.
function confirming(form) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refresh);
  document.querySelectorAll("form[data-confirm]").forEach(confirming);
});
