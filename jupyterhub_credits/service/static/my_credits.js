// My credits: the running sessions come alive here. Their time left counts down every second
// (from the server's seconds_left, re-read from api/me every 30 s, which also refreshes the
// balance and cost so far); Extend (hours -> cost as you type -> Confirm -> POST extend with the
// form's idempotency key) and Stop (confirm -> POST stop -> the charge in words) go through the
// JSON API with window.credits (credits.js). The page moves no credits by itself.
(function () {
  "use strict";
  const credits = window.credits;
  const POLL_MS = 30000;
  const ENDING_S = 300; // the countdown turns red in the last 5 minutes
  const UNITS = 1000; // ledger units per credit
  const LOTS_SHOWN = 20; // as pages/my_credits.py: LOTS_SHOWN

  // A fresh idempotency key (hex, as the server's uuid4().hex).
  function newKey() {
    if (window.crypto && window.crypto.randomUUID) {
      return window.crypto.randomUUID().replace(/-/g, "");
    }
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // "1 h 14 min 5 s", "9 min 58 s", "45 s": a countdown shows its seconds tick.
  function countdownText(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    const h = Math.floor(seconds / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    if (h) {
      return `${h} h ${m} min ${s} s`;
    }
    return m ? `${m} min ${s} s` : `${s} s`;
  }

  // Units from a decimal string ("1.25" -> 1250), exact for the API's 3 places.
  function units(decimal) {
    return Math.round(Number(decimal) * UNITS);
  }

  // What `hours` more cost at `rate` ("1.00" credits/h): ceil(rate x hours) in units, shown
  // rounded up to the cent as the server's messages do.
  function costText(rate, hours) {
    const cost = Math.ceil(units(rate) * hours - 1e-9);
    return credits.credits(Math.ceil(cost / 10) / 100);
  }

  function setText(root, selector, text) {
    const node = root.querySelector(selector);
    if (node) {
      node.textContent = text;
    }
  }

  function setTime(root, selector, iso) {
    const node = root.querySelector(selector);
    if (!node) {
      return;
    }
    node.replaceChildren();
    if (!iso) {
      node.textContent = "—";
      return;
    }
    const time = document.createElement("time");
    time.setAttribute("datetime", iso);
    time.textContent = credits.localTime(iso);
    time.title = iso;
    node.appendChild(time);
  }

  function result(section, message, kind) {
    const box = section.querySelector(".credits-session-result");
    box.replaceChildren();
    if (!message) {
      return;
    }
    const note = document.createElement("div");
    note.className = `alert alert-${kind} py-2 mb-0`;
    note.textContent = message;
    box.appendChild(note);
  }

  class SessionView {
    constructor(section) {
      this.section = section;
      this.server = section.dataset.server;
      this.rate = section.dataset.rate;
      this.ended = false;
      this.deadline = null;
      const left = section.dataset.secondsLeft;
      this.setSecondsLeft(left === "" ? null : Number(left));
      this.wireExtend();
      this.wireStop();
    }

    url(action) {
      return `sessions/${encodeURIComponent(this.server)}/${action}`;
    }

    setSecondsLeft(seconds) {
      const known = seconds !== null && seconds !== undefined && !Number.isNaN(seconds);
      this.deadline = known ? Date.now() + seconds * 1000 : null;
      this.tick();
    }

    tick() {
      const node = this.section.querySelector(".credits-countdown");
      if (!node || this.ended || this.deadline === null) {
        return;
      }
      const left = Math.max(0, Math.round((this.deadline - Date.now()) / 1000));
      node.textContent = left > 0 ? countdownText(left)
        : "paid time is up; the server is being stopped";
      node.classList.toggle("credits-ending", left < ENDING_S);
      node.dataset.seconds = String(left);
    }

    // The session as api/me (or an extend/stop answer) describes it now.
    update(session) {
      this.rate = session.rate_per_hour;
      setText(this.section, ".credits-cost-so-far", credits.credits(session.cost_so_far));
      setText(this.section, ".credits-held", credits.credits(session.held));
      setText(this.section, ".credits-state", session.state);
      setTime(this.section, ".credits-paid-until", session.paid_until);
      setText(this.section, ".credits-session-notice", session.notice || "");
      if (session.state === "ended" || session.ended_at) {
        this.end();
      } else {
        this.setSecondsLeft(session.seconds_left);
      }
    }

    end(words) {
      this.ended = true;
      this.section.dataset.state = "ended";
      setText(this.section, ".credits-state", "ended");
      const countdown = this.section.querySelector(".credits-countdown");
      if (countdown) {
        countdown.textContent = words || "ended";
        countdown.classList.remove("credits-ending");
      }
      this.section
        .querySelectorAll(".credits-session-actions, .credits-extend-form, .credits-stop-confirm")
        .forEach((node) => { node.hidden = true; });
    }

    // --- Extend ------------------------------------------------------------------------

    wireExtend() {
      const open = this.section.querySelector(".credits-extend-open");
      const form = this.section.querySelector(".credits-extend-form");
      if (!open || !form) {
        return;
      }
      const hours = form.querySelector(".credits-extend-hours");
      const cost = form.querySelector(".credits-extend-cost");
      const stepHours = form.querySelector(".credits-extend-step-hours");
      const stepConfirm = form.querySelector(".credits-extend-step-confirm");
      const confirm = form.querySelector(".credits-extend-confirm");
      const question = form.querySelector(".credits-extend-question");
      this.extendForm = form;

      const readHours = () => {
        const text = hours.value.trim();
        const value = Number(text);
        return text !== "" && Number.isFinite(value) && value > 0 ? value : null;
      };
      const showCost = () => {
        const value = readHours();
        cost.textContent = value === null ? "" : `costs ${costText(this.rate, value)} credits`
          + ` (${credits.credits(this.rate)} per hour)`;
      };
      const showStep = (confirming) => {
        stepHours.hidden = confirming;
        stepConfirm.hidden = !confirming;
      };

      open.addEventListener("click", () => {
        this.hideStop();
        if (!form.dataset.key) {
          form.dataset.key = newKey(); // made when the form is shown; kept until it succeeds
        }
        form.hidden = false;
        showStep(false);
        credits.fieldError(hours, "");
        result(this.section, "");
        showCost();
        hours.focus();
        hours.select();
      });
      hours.addEventListener("input", () => {
        credits.fieldError(hours, "");
        showCost();
      });
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const value = readHours();
        if (value === null) {
          credits.fieldError(hours, "Type a number of hours, for example 0.25 or 1.5.");
          return;
        }
        question.textContent = `Add ${hours.value.trim()} h to server ${this.server} for `
          + `${costText(this.rate, value)} credits?`;
        showStep(true);
        confirm.focus();
      });
      form.querySelector(".credits-extend-cancel").addEventListener("click", () => {
        form.hidden = true;
        credits.fieldError(hours, "");
      });
      form.querySelector(".credits-extend-back").addEventListener("click", () => {
        showStep(false);
        hours.focus();
      });
      confirm.addEventListener("click", async () => {
        confirm.disabled = true;
        try {
          const answer = await credits.api("POST", this.url("extend"),
            { hours: hours.value.trim(), key: form.dataset.key });
          form.hidden = true;
          form.dataset.key = ""; // the next extension is a new one
          this.update(answer.session);
          const left = answer.session.seconds_left;
          const paid = answer.session.paid_until;
          const until = paid ? credits.localTime(paid) : "";
          result(this.section, `${answer.message} Paid until ${until}`
            + (left !== null && left !== undefined ? ` (${credits.duration(left)} left).` : "."),
            "success");
          refresh();
        } catch (error) {
          showStep(false);
          credits.fieldError(hours, error.message);
          hours.focus();
        } finally {
          confirm.disabled = false;
        }
      });
    }

    // --- Stop --------------------------------------------------------------------------

    hideStop() {
      const box = this.section.querySelector(".credits-stop-confirm");
      if (box) {
        box.hidden = true;
      }
    }

    wireStop() {
      const open = this.section.querySelector(".credits-stop-open");
      const box = this.section.querySelector(".credits-stop-confirm");
      if (!open || !box) {
        return;
      }
      const confirm = box.querySelector(".credits-stop-confirm-button");
      const key = newKey();
      open.addEventListener("click", () => {
        if (this.extendForm) {
          this.extendForm.hidden = true;
        }
        result(this.section, "");
        box.hidden = false;
        confirm.focus();
      });
      box.querySelector(".credits-stop-cancel").addEventListener("click", () => {
        box.hidden = true;
      });
      confirm.addEventListener("click", async () => {
        confirm.disabled = true;
        result(this.section, "Stopping the server and settling what it used…", "secondary");
        try {
          const answer = await credits.api("POST", this.url("stop"), { key: key });
          this.update(answer.session);
          this.end("stopped");
          result(this.section, answer.message, "success");
          refresh();
        } catch (error) {
          result(this.section, error.message, "danger");
          if (error.status === 404 || error.status === 409) {
            this.end();
          }
        } finally {
          confirm.disabled = false;
        }
      });
    }
  }

  const views = new Map();
  document.querySelectorAll(".credits-session").forEach((section) => {
    views.set(section.dataset.server, new SessionView(section));
  });

  // The credits that expire soon, as api/me/lots has them now (a session's reservation
  // takes from them; its release or a new earning gives back).
  async function refreshLots() {
    const list = document.getElementById("credits-expiring-lots");
    const empty = document.getElementById("credits-expiring-empty");
    if (!list || !empty) {
      return;
    }
    let data;
    try {
      data = await credits.api("GET", "me/lots");
    } catch (error) {
      return;
    }
    const now = Date.now();
    const until = now + data.soon_days * 86400 * 1000;
    const soon = data.lots.filter((lot) => lot.expires_at && Number(lot.available) > 0
      && Date.parse(lot.expires_at) > now && Date.parse(lot.expires_at) <= until);
    setText(document, "#credits-expiring", credits.credits(data.expiring_soon));
    list.replaceChildren();
    soon.slice(0, LOTS_SHOWN).forEach((lot) => {
      const item = document.createElement("li");
      const amount = document.createElement("span");
      amount.className = "credits-amount";
      amount.textContent = credits.credits(lot.available);
      const time = document.createElement("time");
      time.setAttribute("datetime", lot.expires_at);
      time.title = lot.expires_at;
      time.textContent = credits.localTime(lot.expires_at);
      item.append(amount, ` from ${lot.reason || lot.kind} — expires `, time);
      list.appendChild(item);
    });
    if (soon.length > LOTS_SHOWN) {
      const more = document.createElement("li");
      more.textContent = `and ${soon.length - LOTS_SHOWN} more`;
      list.appendChild(more);
    }
    list.hidden = soon.length === 0;
    empty.hidden = soon.length !== 0;
  }

  // Balance and sessions as the server has them now.
  async function refresh() {
    refreshLots();
    let me;
    try {
      me = await credits.api("GET", "me");
    } catch (error) {
      return; // the next poll tries again; the countdown keeps running meanwhile
    }
    setText(document, "#credits-available", credits.credits(me.available));
    setText(document, "#credits-reserved", credits.credits(me.reserved));
    const seen = new Set();
    let unknown = 0;
    for (const session of me.sessions) {
      seen.add(session.server_label);
      const view = views.get(session.server_label);
      if (view) {
        if (!view.ended) {
          view.update(session);
        }
      } else {
        unknown += 1;
      }
    }
    views.forEach((view, server) => {
      if (!seen.has(server) && !view.ended) {
        view.end("ended");
      }
    });
    const note = document.getElementById("credits-sessions-note");
    if (note) {
      note.hidden = unknown === 0;
      note.replaceChildren();
      if (unknown) {
        note.append(`${unknown === 1 ? "A session" : `${unknown} sessions`} started since this `
          + "page was loaded. ");
        const link = document.createElement("a");
        link.href = window.location.pathname + window.location.search;
        link.textContent = "Reload to see it.";
        note.appendChild(link);
      }
    }
  }

  window.setInterval(() => views.forEach((view) => view.tick()), 1000);
  window.setInterval(refresh, POLL_MS);
})();
