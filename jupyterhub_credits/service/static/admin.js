// The admin panel's writes, all through the credits JSON API (window.credits.api): grant and
// deduct (preview, then Confirm), reverse, stop a session, freeze earning, the CSV export link
// and verify. Every write is confirmed first; each form carries the idempotency key the server
// put in it, so a double click or a resent request acts once. Errors appear next to what
// caused them. Text from the API is only ever set as textContent.
(function () {
  "use strict";
  const credits = window.credits;
  const api = credits.api;
  const byId = (id) => document.getElementById(id);

  // --- small helpers ------------------------------------------------------------------

  function element(tag, attributes, ...children) {
    const node = document.createElement(tag);
    Object.entries(attributes || {}).forEach(([name, value]) => {
      if (name === "className") {
        node.className = value;
      } else if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, value === true ? "" : value);
      }
    });
    children.flat().forEach((child) => {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : String(child));
      }
    });
    return node;
  }

  function timeNode(iso) {
    return iso ? element("time", { datetime: iso, title: iso }, credits.localTime(iso)) : "—";
  }

  // A fresh idempotency key (hex, as the server's uuid4().hex) for a form shown again after
  // it acted: the next operation is a new one. getRandomValues works on plain http too.
  function freshKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function plural(count, noun) {
    return `${count} ${noun}${count === 1 ? "" : "s"}`;
  }

  function clearErrors(root) {
    root.querySelectorAll(".is-invalid").forEach((node) => credits.fieldError(node, ""));
  }

  // A message about a box goes once the person changes what is in it (in the capture phase:
  // a box that checks itself on input says so again right after).
  document.addEventListener("input", (event) => {
    const box = event.target;
    if (box.id && box.classList && box.classList.contains("is-invalid")) {
      credits.fieldError(box, "");
    }
  }, true);

  // --- the confirmation dialog ----------------------------------------------------------

  const dialog = {
    node: byId("admin-confirm"),
    form: byId("admin-confirm-form"),
    title: byId("admin-confirm-title"),
    text: byId("admin-confirm-text"),
    reasonGroup: byId("admin-confirm-reason-group"),
    reasonLabel: byId("admin-confirm-reason-label"),
    reason: byId("admin-confirm-reason"),
    problem: byId("admin-confirm-problem"),
    ok: byId("admin-confirm-ok"),
    current: null,
  };

  function modal() {
    return window.bootstrap.Modal.getOrCreateInstance(dialog.node);
  }

  // Asks before a write. `reason`: null (no reason box) or {label, required}. `action(reason)`
  // does the write; an ApiError it throws is shown in the dialog (next to the reason box when
  // it is about the reason) and the dialog stays open.
  function confirmAction({ title, text, confirmLabel, reason, action }) {
    dialog.current = { reason, action };
    dialog.title.textContent = title;
    dialog.text.textContent = text;
    dialog.ok.textContent = confirmLabel || "Confirm";
    dialog.ok.disabled = false;
    dialog.problem.textContent = "";
    dialog.reason.value = "";
    credits.fieldError(dialog.reason, "");
    dialog.reasonGroup.hidden = !reason;
    if (reason) {
      dialog.reasonLabel.textContent = reason.label || "Reason";
    }
    modal().show();
  }

  if (dialog.node) {
    dialog.node.addEventListener("shown.bs.modal", () => {
      (dialog.current && dialog.current.reason ? dialog.reason : dialog.ok).focus();
    });
    dialog.form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const current = dialog.current;
      if (!current || dialog.ok.disabled) {
        return;
      }
      const reason = dialog.reason.value.trim();
      credits.fieldError(dialog.reason, "");
      dialog.problem.textContent = "";
      if (current.reason && current.reason.required && !reason) {
        credits.fieldError(dialog.reason, "Give a reason: it is kept with the transfer.");
        dialog.reason.focus();
        return;
      }
      dialog.ok.disabled = true;
      try {
        await current.action(reason);
        dialog.current = null;
        modal().hide();
      } catch (error) {
        const message = error.message || String(error);
        if (current.reason && /reason/i.test(message)) {
          credits.fieldError(dialog.reason, message);
        } else {
          dialog.problem.textContent = message;
        }
      } finally {
        dialog.ok.disabled = false;
      }
    });
  }

  // --- reverse a transfer -----------------------------------------------------------------

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-admin-reverse]");
    if (!button) {
      return;
    }
    const id = button.dataset.adminReverse;
    confirmAction({
      title: `Reverse transfer #${id}`,
      text: `Reverse ${button.dataset.summary}? A new transfer moves the credits back ` +
            "(for a grant or earning: what is still unspent of it); the original stays in the log.",
      confirmLabel: "Reverse",
      reason: { label: "Why (kept with the reversal)", required: true },
      action: async (reason) => {
        const answer = await api("POST", `admin/transfers/${encodeURIComponent(id)}/reverse`,
                                 { reason: reason, key: button.dataset.key });
        const cell = button.parentElement;
        const transfer = answer.transfer || {};
        cell.replaceChildren(element("span", { className: "badge text-bg-success admin-reversed" },
                                     `reversed by #${transfer.id}`),
                             element("div", { className: "admin-note small" },
                                     answer.message || ""));
      },
    });
  });

  // --- stop a session -----------------------------------------------------------------------

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-admin-stop]");
    if (!button) {
      return;
    }
    const user = button.dataset.adminStop;
    const server = button.dataset.server;
    confirmAction({
      title: "Stop this session",
      text: `Stop ${button.dataset.summary}? The server stops now; ${user} pays for the time ` +
            "used so far and the rest of the hold returns to their balance.",
      confirmLabel: "Stop session",
      reason: { label: "Reason (optional, shown to the user)", required: false },
      action: async (reason) => {
        const body = reason ? { reason: reason } : {};
        const answer = await api(
          "POST", `admin/sessions/${encodeURIComponent(user)}/${encodeURIComponent(server)}/stop`,
          body);
        const row = button.closest("tr");
        row.querySelectorAll(".credits-countdown").forEach((node) => {
          node.removeAttribute("data-seconds-left");
          node.textContent = "stopped";
        });
        const charged = answer.session && answer.session.charged;
        row.querySelectorAll(".admin-cost").forEach((node) => {
          node.textContent = charged !== undefined ? credits.credits(charged) : node.textContent;
        });
        button.parentElement.replaceChildren(
          element("div", { className: "admin-stopped admin-note small" },
                  answer.message || "Stopped."));
      },
    });
  });

  // --- freeze / unfreeze a user's earning ---------------------------------------------------

  function setFrozen(frozen) {
    const state = byId("admin-freeze-state");
    state.textContent = frozen ? "earning frozen" : "earning";
    state.className = `badge ${frozen ? "text-bg-danger" : "text-bg-success"}`;
    byId("admin-freeze").hidden = frozen;
    byId("admin-unfreeze").hidden = !frozen;
  }

  const freeze = byId("admin-freeze");
  if (freeze) {
    const user = freeze.dataset.user;
    const path = `accounts/${encodeURIComponent(user)}/freeze`;
    freeze.addEventListener("click", () => confirmAction({
      title: `Freeze ${user}'s earning`,
      text: `Until you unfreeze it, every activity ${user} reports is kept but earns nothing. ` +
            "Their balance and sessions are not touched.",
      confirmLabel: "Freeze",
      reason: { label: "Reason (optional)", required: false },
      action: async (reason) => {
        const answer = await api("POST", path, reason ? { reason: reason } : {});
        setFrozen(answer.frozen);
      },
    }));
    byId("admin-unfreeze").addEventListener("click", () => confirmAction({
      title: `Unfreeze ${user}'s earning`,
      text: `${user} earns again from their next activity on.`,
      confirmLabel: "Unfreeze",
      reason: null,
      action: async () => {
        const answer = await api("DELETE", path);
        setFrozen(answer.frozen);
      },
    }));
  }

  // --- grant or deduct on a user's page -------------------------------------------------

  const userGrant = byId("admin-user-grant-form");
  if (userGrant) {
    userGrant.addEventListener("submit", (event) => {
      event.preventDefault();
      clearErrors(userGrant);
      const user = userGrant.dataset.user;
      const operation = byId("admin-user-op").value;
      const amountBox = byId("admin-user-amount");
      const reasonBox = byId("admin-user-reason");
      const amount = amountBox.value.trim();
      const reason = reasonBox.value.trim();
      if (!amount) {
        credits.fieldError(amountBox, "How many credits?");
        return;
      }
      if (!reason) {
        credits.fieldError(reasonBox, "Give a reason: the user sees it in their history.");
        return;
      }
      const result = byId("admin-user-grant-result");
      confirmAction({
        title: operation === "grant" ? `Grant credits to ${user}` : `Deduct credits from ${user}`,
        text: `${operation === "grant" ? "Grant" : "Deduct"} ${credits.credits(amount)} credits ` +
              `${operation === "grant" ? "to" : "from"} ${user}, reason “${reason}”?`,
        confirmLabel: operation === "grant" ? "Grant" : "Deduct",
        reason: null,
        action: async () => {
          let answer;
          try {
            answer = await api("POST", `admin/${operation}`,
                               { user: user, amount: amount, reason: reason,
                                 key: userGrant.dataset.key });
          } catch (error) {
            // Shown next to the box it is about; the dialog closes.
            const box = /reason/i.test(error.message) ? reasonBox : amountBox;
            credits.fieldError(box, error.message);
            return;
          }
          userGrant.dataset.key = freshKey();
          amountBox.value = "";
          result.replaceChildren(element("div", { className: "alert alert-success py-2 mb-0" },
            answer.message || `Done: transfer #${answer.transfer.id}.`, " ",
            element("a", { href: window.location.href }, "Refresh the page"),
            " to see it in the balance and history."));
        },
      });
    });
  }

  // --- grant and deduct in bulk (the Grant & deduct tab) --------------------------------------

  const grantForm = byId("admin-grant-form");
  if (grantForm) {
    const targetKind = byId("admin-target-kind");
    const targetBoxes = {
      user: byId("admin-target-user"),
      users: byId("admin-target-users"),
      group: byId("admin-target-group"),
      pool: byId("admin-target-pool"),
      csv: byId("admin-target-csv"),
    };
    const amountBox = byId("admin-amount");
    const reasonBox = byId("admin-reason");
    const expiresBox = byId("admin-expires");
    const problem = byId("admin-grant-problem");
    const preview = byId("admin-preview");
    const applyButton = byId("admin-apply-button");
    const applyProblem = byId("admin-apply-problem");
    let prepared = null; // what Confirm applies: {kind, body, lines}

    const operation = () => grantForm.querySelector("input[name=operation]:checked").value;

    function showFields() {
      const kind = targetKind.value;
      grantForm.querySelectorAll(".admin-target").forEach((node) => {
        node.hidden = node.dataset.target !== kind;
      });
      // Granted credits may expire; deducted ones have nothing to expire.
      byId("admin-expires-group").hidden = operation() !== "grant";
      grantForm.querySelector(".admin-amount-each").textContent =
        kind === "csv" ? " — for lines without one" : (kind === "users" || kind === "group" ? " — each" : "");
      byId("admin-reason-hint").textContent = kind === "csv"
        ? "(for lines without one; the user sees it in their history)"
        : "(required; the user sees it in their history)";
      hidePreview();
    }

    function hidePreview() {
      preview.hidden = true;
      prepared = null;
    }

    targetKind.addEventListener("change", showFields);
    grantForm.querySelectorAll("input[name=operation]").forEach((radio) =>
      radio.addEventListener("change", showFields));
    grantForm.addEventListener("input", hidePreview);
    byId("admin-preview-cancel").addEventListener("click", () => {
      hidePreview();
      targetBoxes[targetKind.value].focus();
    });
    showFields();

    function readFile(file) {
      return new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result);
        reader.onerror = () => reject(new Error("The file could not be read."));
        reader.readAsText(file);
      });
    }

    // Puts an API refusal next to the field it is about.
    function showProblem(message) {
      const kind = targetKind.value;
      let box = null;
      if (/reason/i.test(message)) {
        box = reasonBox;
      } else if (/amount/i.test(message) && !/line/i.test(message)) {
        box = amountBox;
      } else if (/expir/i.test(message)) {
        box = expiresBox;
      } else if (/group|user|csv|line|pool|target/i.test(message)) {
        box = targetBoxes[kind];
      }
      if (box) {
        credits.fieldError(box, message);
        box.focus();
      } else {
        problem.textContent = message;
      }
    }

    // The request body of the preview and of the bulk apply (without its key).
    async function bulkBody(kind, op, amount, reason, expires) {
      const body = { operation: op, reason: reason };
      if (amount) {
        body.amount = amount;
      }
      if (expires) {
        body.expires_in_days = Number(expires);
      }
      if (kind === "user") {
        body.users = [targetBoxes.user.value.trim()];
      } else if (kind === "users") {
        body.users = targetBoxes.users.value.split(/[\s,;]+/).map((n) => n.trim()).filter(Boolean);
      } else if (kind === "group") {
        body.group = targetBoxes.group.value.trim();
      } else if (kind === "csv") {
        body.csv = await readFile(targetBoxes.csv.files[0]);
      }
      return body;
    }

    function targetMissing(kind) {
      if (kind === "csv") {
        return targetBoxes.csv.files.length ? "" : "Choose a CSV file.";
      }
      if (kind === "users") {
        return targetBoxes.users.value.trim() ? "" : "Name at least one user.";
      }
      const box = targetBoxes[kind];
      const what = { user: "Which user?", group: "Which hub group?", pool: "Which group's pool?" };
      return box.value.trim() ? "" : what[kind];
    }

    grantForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors(grantForm);
      problem.textContent = "";
      hidePreview();
      const kind = targetKind.value;
      const op = operation();
      const amount = amountBox.value.trim();
      const reason = reasonBox.value.trim();
      const missing = targetMissing(kind);
      if (missing) {
        credits.fieldError(targetBoxes[kind], missing);
        targetBoxes[kind].focus();
        return;
      }
      if (!amount && kind !== "csv") {
        credits.fieldError(amountBox, "How many credits?");
        amountBox.focus();
        return;
      }
      if (!reason && kind !== "csv") {
        credits.fieldError(reasonBox, "A reason is required: the user sees it in their history.");
        reasonBox.focus();
        return;
      }
      const expires = op === "grant" ? expiresBox.value.trim() : "";
      if (expires && !/^[1-9][0-9]*$/.test(expires)) {
        credits.fieldError(expiresBox, "Whole days, or empty for never.");
        expiresBox.focus();
        return;
      }
      const previewButton = byId("admin-preview-button");
      previewButton.disabled = true;
      try {
        let answer;
        let body = null;
        if (kind === "pool") {
          // Nothing to resolve: one line, the group's pool account.
          answer = { lines: [{ line: 1, user: `pool of group ${targetBoxes.pool.value.trim()}`,
                               amount: amount, reason: reason, error: null }],
                     count: 1, errors: 0, total: amount };
        } else {
          body = await bulkBody(kind, op, amount, reason, expires);
          answer = await api("POST", "admin/bulk/preview", body);
        }
        prepared = { kind, op, amount, reason, body, expires };
        showPreview(answer, kind, op, amount);
      } catch (error) {
        showProblem(error.message);
      } finally {
        previewButton.disabled = false;
      }
    });

    function showPreview(answer, kind, op, amount) {
      const body = byId("admin-preview-lines").querySelector("tbody");
      body.replaceChildren(...answer.lines.map((line) => element(
        "tr", { className: line.error ? "table-danger" : null, "data-line": line.line },
        element("td", {}, line.line),
        element("td", { className: "admin-name" }, line.user || "—"),
        element("td", { className: "credits-number credits-amount" },
                line.amount ? credits.credits(line.amount) : "—"),
        element("td", { className: "admin-reason small" }, line.reason || ""),
        element("td", { className: "small" }, line.error || ""))));
      const good = answer.count - answer.errors;
      const verb = op === "grant" ? "Grant" : "Deduct";
      const to = op === "grant" ? "to" : "from";
      let summary;
      if ((kind === "group" || kind === "users") && amount) {
        const whom = kind === "group"
          ? `each of the ${plural(answer.count, "member")} of hub group “${targetBoxes.group.value.trim()}”`
          : `each of ${plural(answer.count, "user")}`;
        summary = `${verb} ${to} ${whom}: ${plural(good, "user")} × ` +
                  `${credits.credits(amount)} credits = ${credits.credits(answer.total)} credits.`;
      } else {
        summary = `${verb} ${credits.credits(answer.total)} credits in total over ${plural(good, "line")}.`;
      }
      if (answer.errors) {
        summary += ` ${plural(answer.errors, "line")} cannot apply and will be skipped.`;
      }
      byId("admin-preview-summary").textContent = summary;
      applyButton.textContent = `Confirm: ${op} ${credits.credits(answer.total)} credits ` +
                                `(${plural(good, { pool: "account", csv: "line" }[kind] || "user")})`;
      applyButton.disabled = good === 0;
      applyProblem.textContent = good === 0 ? "Nothing would apply: correct the lines first." : "";
      preview.hidden = false;
      applyButton.focus();
    }

    applyButton.addEventListener("click", async () => {
      if (!prepared) {
        return;
      }
      applyButton.disabled = true;
      applyProblem.textContent = "";
      const key = grantForm.dataset.key;
      try {
        let results;
        if (prepared.kind === "user" || prepared.kind === "pool") {
          const body = { amount: prepared.amount, reason: prepared.reason, key: key };
          if (prepared.kind === "user") {
            body.user = targetBoxes.user.value.trim();
          } else {
            body.pool = targetBoxes.pool.value.trim();
          }
          if (prepared.expires) {
            body.expires_in_days = Number(prepared.expires);
          }
          const answer = await api("POST", `admin/${prepared.op}`, body);
          results = { applied: answer.duplicate ? 0 : 1, duplicates: answer.duplicate ? 1 : 0,
                      failed: 0, results: [{
            line: 1, user: body.user || `pool of group ${body.pool}`,
            amount: answer.transfer.amount, status: answer.duplicate ? "duplicate" : "applied",
            transfer_id: answer.transfer.id, message: answer.message }] };
        } else {
          results = await api("POST", "admin/bulk", Object.assign({}, prepared.body, { key: key }));
        }
        showResults(results);
      } catch (error) {
        applyProblem.textContent = error.message;
        applyButton.disabled = false;
      }
    });

    function showResults(answer) {
      preview.hidden = true;
      grantForm.querySelectorAll("input, select, textarea, button").forEach((node) => {
        node.disabled = true;
      });
      const body = byId("admin-result-lines").querySelector("tbody");
      body.replaceChildren(...answer.results.map((line) => element(
        "tr", { className: line.status === "error" ? "table-danger" : null,
                "data-line": line.line, "data-status": line.status },
        element("td", {}, line.line),
        element("td", { className: "admin-name" }, line.user || "—"),
        element("td", { className: "credits-number credits-amount" },
                line.amount ? credits.credits(line.amount) : "—"),
        element("td", { className: `admin-result-${line.status === "error" ? "error" : "applied"}` },
                line.status),
        element("td", { className: "small" },
                line.transfer_id ? `#${line.transfer_id} ` : "", line.message || ""))));
      byId("admin-results-summary").textContent =
        `${plural(answer.applied, "line")} applied` +
        (answer.duplicates ? `, ${answer.duplicates} already applied before` : "") +
        (answer.failed ? `, ${plural(answer.failed, "line")} failed (nothing of them applied).` : ".");
      byId("admin-results").hidden = false;
    }
  }

  // --- CSV export -------------------------------------------------------------------------

  const exportLink = byId("admin-export-link");
  if (exportLink) {
    const since = byId("admin-export-since");
    const until = byId("admin-export-until");
    const base = exportLink.getAttribute("href").split("?")[0];
    const update = () => {
      credits.fieldError(until, "");
      const bad = since.value && until.value && since.value > until.value;
      if (bad) {
        credits.fieldError(until, "“Until” is before “From”.");
      }
      const query = new URLSearchParams();
      if (since.value) {
        query.set("since", since.value);
      }
      if (until.value) {
        query.set("until", until.value);
      }
      exportLink.href = `${base}?${query}`;
      exportLink.classList.toggle("disabled", Boolean(bad));
      exportLink.setAttribute("aria-disabled", bad ? "true" : "false");
    };
    since.addEventListener("input", update);
    until.addEventListener("input", update);
    update();
  }

  // --- verify -------------------------------------------------------------------------

  const verifyButton = byId("admin-verify-button");
  if (verifyButton) {
    const state = byId("admin-verify-state");
    const detail = byId("admin-verify-detail");
    const verifyProblem = byId("admin-verify-problem");
    let timer = null;

    const show = (run) => {
      verifyButton.disabled = run.state === "running";
      detail.replaceChildren();
      state.className = "fw-semibold";
      state.dataset.state = run.state;
      if (run.state === "never") {
        state.textContent = "Not run since the credits service started.";
      } else if (run.state === "running") {
        state.replaceChildren("Running since ", timeNode(run.started_at), "…");
      } else if (run.state === "failed") {
        state.classList.add("text-danger");
        state.textContent = "Verify could not finish.";
      } else if (run.ok) {
        state.classList.add("text-success");
        state.textContent = `The ledger is consistent (${plural(run.transfers, "transfer")} checked).`;
      } else {
        state.classList.add("text-danger");
        state.textContent = `${plural((run.problems || []).length, "problem")} found.`;
      }
      if (run.state === "done" || run.state === "failed") {
        detail.append(element("div", { className: "text-body-secondary" },
          "Started ", timeNode(run.started_at), ", finished ", timeNode(run.finished_at), "."));
        if ((run.problems || []).length) {
          detail.append(element("ul", { id: "admin-verify-problems" },
            run.problems.slice(0, 100).map((text) => element("li", {}, String(text)))));
        }
      }
      clearTimeout(timer);
      if (run.state === "running") {
        timer = setTimeout(refresh, 1000);
      }
    };

    const refresh = async () => {
      try {
        show(await api("GET", "admin/verify"));
        verifyProblem.textContent = "";
      } catch (error) {
        if (state.dataset.state === undefined) {
          state.textContent = "The last result could not be read.";
        }
        verifyProblem.textContent = error.message;
        timer = setTimeout(refresh, 5000);
      }
    };

    verifyButton.addEventListener("click", async () => {
      verifyProblem.textContent = "";
      verifyButton.disabled = true;
      try {
        show(await api("POST", "admin/verify"));
      } catch (error) {
        verifyProblem.textContent = error.message;
        verifyButton.disabled = false;
      }
    });
    refresh();
  }

  // --- countdowns of open sessions --------------------------------------------------------

  // Time left and cost so far move on in the browser from what the server said at load
  // (cost: rate × time since, never more than is held); Stop freezes a row.
  const countdowns = Array.from(document.querySelectorAll(".credits-countdown[data-seconds-left]"));
  const costs = Array.from(document.querySelectorAll(".admin-cost[data-rate]"));
  if (countdowns.length) {
    const started = Date.now();
    const tick = () => {
      const elapsed = (Date.now() - started) / 1000;
      costs.forEach((node) => {
        if (!node.closest("tr").querySelector(".credits-countdown[data-seconds-left]")) {
          return;
        }
        const cost = Math.min(Number(node.dataset.held),
                              Number(node.dataset.cost) + Number(node.dataset.rate) * elapsed / 3600);
        node.textContent = credits.credits(cost);
      });
      countdowns.forEach((node) => {
        if (!node.hasAttribute("data-seconds-left")) {
          return;
        }
        const left = Number(node.dataset.secondsLeft) - elapsed;
        node.textContent = left > 0 ? credits.duration(left) : "paid time over";
        node.classList.toggle("credits-ending", left < 300);
      });
    };
    tick();
    setInterval(tick, 1000);
  }
})();
