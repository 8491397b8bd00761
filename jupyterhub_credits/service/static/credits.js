// Shared by every credits page: the JSON API with the page's XSRF token, numbers, durations
// and dates in the viewer's time zone, field errors. Page scripts use window.credits.
(function () {
  "use strict";
  const page = document.getElementById("credits-page");
  const apiUrl = page ? page.dataset.apiUrl : "";
  const xsrf = page ? page.dataset.xsrf : "";

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // Calls the credits API as the logged-in browser (the service's cookie; writes carry the
  // XSRF token). Resolves with the JSON answer; rejects with an ApiError whose message is the
  // service's own words.
  async function api(method, path, body) {
    const options = {
      method: method,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-XSRFToken": xsrf },
    };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(apiUrl + path, options);
    } catch (error) {
      throw new ApiError(0, "The credits service could not be reached. Try again in a moment.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (!response.ok) {
      const message = data && data.message ? data.message : `Request failed (HTTP ${response.status}).`;
      throw new ApiError(response.status, message);
    }
    return data;
  }

  // "12.5" / "12.50000" -> "12.50": two decimals for reading; the API keeps the exact value.
  function credits(amount) {
    const value = Number(amount);
    if (!Number.isFinite(value)) {
      return String(amount);
    }
    return value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }

  // The same words as catalog.wording.duration_text: "2 h 13 min", "9 min 58 s", "45 s".
  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    const hours = Math.floor(seconds / 3600);
    const minutes = Math.floor((seconds % 3600) / 60);
    const secs = seconds % 60;
    if (hours) {
      return minutes ? `${hours} h ${minutes} min` : `${hours} h`;
    }
    if (minutes) {
      return secs ? `${minutes} min ${secs} s` : `${minutes} min`;
    }
    return `${secs} s`;
  }

  const dateFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });

  function localTime(iso) {
    if (!iso) {
      return "";
    }
    const moment = new Date(iso);
    return Number.isNaN(moment.getTime()) ? iso : dateFormat.format(moment);
  }

  // Every <time datetime="..."> rendered by the server (in UTC) shown in the viewer's zone.
  function localizeTimes(root) {
    (root || document).querySelectorAll("time[datetime]").forEach(function (node) {
      node.textContent = localTime(node.getAttribute("datetime"));
      node.title = node.getAttribute("datetime");
    });
  }

  // Shows `message` next to the element it is about (or clears it with an empty message).
  function fieldError(element, message) {
    const id = element.id + "-error";
    let note = document.getElementById(id);
    if (!note) {
      note = document.createElement("div");
      note.id = id;
      note.className = "credits-field-error";
      note.setAttribute("role", "alert");
      element.insertAdjacentElement("afterend", note);
    }
    note.textContent = message || "";
    element.classList.toggle("is-invalid", Boolean(message));
  }

  window.credits = { api, ApiError, credits, duration, localTime, localizeTimes, fieldError };
  document.addEventListener("DOMContentLoaded", function () {
    localizeTimes(document);
  });
})();
