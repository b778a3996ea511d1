/* dermtriage clinician viewer: plain JavaScript, no dependencies, same-origin calls only.
 *
 * Every server string is written with textContent, never parsed as markup: answers echo text that
 * callers sent (candidate labels, symptoms), so nothing from the server is parsed as HTML.
 * Each part of the answer that may be null (urgency, urgency_shap, uncertainty, heatmaps,
 * findings) is rendered when present and shown as "not available" (or hidden) when absent.
 */
(function () {
  "use strict";

  var KEY_STORE = "dermtriage.apiKey";
  var CATEGORY_LABEL = {
    emergency: "Emergency",
    urgent: "Urgent",
    soon: "Soon",
    routine: "Routine",
    self_care: "Self-care",
  };
  var FEATURE_LABEL = {
    image: "photo",
    photo: "photo",
    symptoms: "symptoms text",
    text: "symptoms text",
    risk_factors: "risk factors",
    patient: "patient",
    lesion_site_size: "lesion site and size",
    lesion_change: "lesion change",
    lesion_symptoms: "lesion symptoms",
    systemic: "whole-body signs",
    age: "age",
    fitzpatrick: "skin type",
    body_site: "body site",
    diameter_mm: "diameter",
    lesion_duration_days: "duration",
    changed_size: "change in size",
    changed_shape: "change in shape",
    changed_colour: "change in colour",
    family_history_melanoma: "family history of melanoma",
    personal_history_skin_cancer: "past skin cancer",
  };
  var MODEL_INPUTS = { image_probs: true, symptom_text_sims: true, findings: true };
  var FLAG_LABEL = {
    out_of_distribution: "Unusual photo",
    poor_quality: "Photo quality",
    low_confidence: "Low confidence",
    ambiguous: "Ambiguous",
    unvalidated_condition: "Not validated",
    underrepresented_skin_type: "Skin type under-represented",
    uncalibrated: "Uncalibrated",
    outside_scope: "Outside model scope",
  };

  var state = {
    file: null, // the photo chosen in this tab
    fileURL: null, // object URL of that photo (the heatmap base layer)
    photoFor: null, // request id the photo was triaged under
    result: null,
    conditionNames: null,
    busy: false,
  };

  function $(id) {
    return document.getElementById(id);
  }

  /* Create an element; text goes through textContent only. */
  function el(tag, opts, children) {
    var node = document.createElement(tag);
    opts = opts || {};
    if (opts.cls) node.className = opts.cls;
    if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
    if (opts.attrs) {
      Object.keys(opts.attrs).forEach(function (k) {
        node.setAttribute(k, opts.attrs[k]);
      });
    }
    (children || []).forEach(function (c) {
      if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function pct(p) {
    if (typeof p !== "number" || !isFinite(p)) return "–";
    var v = p * 100;
    return (v >= 10 || v === 0 ? v.toFixed(0) : v < 0.1 ? "<0.1" : v.toFixed(1)) + " %";
  }

  function num(x, digits) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits === undefined ? 2 : digits) : "–";
  }

  function words(id) {
    return String(id).replace(/_/g, " ");
  }

  function featureLabel(name) {
    return FEATURE_LABEL[name] || words(name);
  }

  /* ------------------------------------------------------------------ API key and requests */

  function apiKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch (e) {
      return "";
    }
  }

  function authHeaders() {
    var key = apiKey().trim();
    var h = { Accept: "application/json" };
    if (key) {
      h["X-API-Key"] = key;
    }
    return h;
  }

  function ProblemError(status, body, fallback) {
    this.status = status;
    this.body = body || null;
    this.message = (body && (body.detail || body.title)) || fallback || "HTTP " + status;
  }

  function request(method, url, body, extraHeaders) {
    var headers = authHeaders();
    if (extraHeaders) Object.keys(extraHeaders).forEach(function (k) { headers[k] = extraHeaders[k]; });
    return fetch(url, { method: method, headers: headers, body: body, credentials: "same-origin" }).then(
      function (resp) {
        var type = resp.headers.get("content-type") || "";
        var parse = type.indexOf("json") >= 0 ? resp.json().catch(function () { return null; }) : Promise.resolve(null);
        return parse.then(function (data) {
          if (!resp.ok) throw new ProblemError(resp.status, data, resp.statusText);
          return data;
        });
      },
      function () {
        throw new ProblemError(0, null, "Could not reach the service. Check the connection and try again.");
      }
    );
  }

  /* ------------------------------------------------------------------ the form */

  function expandTristates() {
    var nodes = document.querySelectorAll("[data-tristate]");
    Array.prototype.forEach.call(nodes, function (holder) {
      var field = holder.getAttribute("data-tristate");
      var text = holder.textContent;
      var fs = el("fieldset", { cls: "tri", attrs: { "data-field": field } });
      fs.appendChild(el("legend", { text: text }));
      var seg = el("div", { cls: "seg" });
      [
        ["", "?", "unknown"],
        ["true", "Yes", "yes"],
        ["false", "No", "no"],
      ].forEach(function (opt) {
        var id = "rf-" + field + "-" + opt[2];
        var input = el("input", {
          attrs: { type: "radio", name: "rf-" + field, id: id, value: opt[0] },
        });
        if (opt[0] === "") input.checked = true;
        var label = el("label", { text: opt[1], attrs: { for: id } });
        if (opt[0] === "") label.setAttribute("aria-label", "unknown");
        seg.appendChild(input);
        seg.appendChild(label);
      });
      fs.appendChild(seg);
      holder.parentNode.replaceChild(fs, holder);
    });
  }

  function collectRiskFactors() {
    var out = {};
    Array.prototype.forEach.call(document.querySelectorAll("[data-rf]"), function (input) {
      var v = input.value.trim();
      if (v === "") return;
      var name = input.getAttribute("data-rf");
      if (input.type === "number" || input.getAttribute("data-type") === "int") {
        var n = Number(v);
        if (isFinite(n)) out[name] = n;
      } else {
        out[name] = v;
      }
    });
    Array.prototype.forEach.call(document.querySelectorAll("fieldset.tri"), function (fs) {
      var checked = fs.querySelector("input:checked");
      if (checked && checked.value !== "") out[fs.getAttribute("data-field")] = checked.value === "true";
    });
    var dur = $("rf-duration").value.trim();
    if (dur !== "" && isFinite(Number(dur))) {
      out.lesion_duration_days = Math.round(Number(dur) * Number($("rf-duration-unit").value) * 10) / 10;
    }
    return Object.keys(out).length ? out : null;
  }

  function setPhoto(file) {
    if (!file) return;
    if (state.fileURL && state.photoFor === null) URL.revokeObjectURL(state.fileURL);
    state.file = file;
    state.fileURL = URL.createObjectURL(file);
    state.photoFor = null;
    var img = $("photo-preview");
    img.onerror = function () {
      img.hidden = true;
      $("photo-name").textContent = file.name + " (no preview in this browser; the service can still read it)";
    };
    img.src = state.fileURL;
    img.alt = "Preview of the chosen photo";
    img.hidden = false;
    $("drop-text").textContent = "Photo chosen. Drop another to replace it, or";
    $("photo-name").textContent = file.name + " · " + Math.round(file.size / 1024) + " KiB";
  }

  function onFileInput(ev) {
    var f = ev.target.files && ev.target.files[0];
    if (f) setPhoto(f);
  }

  function wireDrop() {
    var zone = $("drop-zone");
    ["dragenter", "dragover"].forEach(function (t) {
      zone.addEventListener(t, function (ev) {
        ev.preventDefault();
        zone.classList.add("over");
      });
    });
    ["dragleave", "drop"].forEach(function (t) {
      zone.addEventListener(t, function (ev) {
        ev.preventDefault();
        zone.classList.remove("over");
      });
    });
    zone.addEventListener("drop", function (ev) {
      var f = ev.dataTransfer && ev.dataTransfer.files && ev.dataTransfer.files[0];
      if (f) setPhoto(f);
    });
  }

  function setBusy(busy, text) {
    state.busy = busy;
    $("submit").disabled = busy;
    $("results").setAttribute("aria-busy", busy ? "true" : "false");
    $("status").textContent = text || "";
    $("status").classList.toggle("working", !!busy);
  }

  function showError(err) {
    var box = clear($("error"));
    var body = err.body || {};
    var title = body.title || (err.status ? "The service answered " + err.status : "No answer");
    box.appendChild(el("strong", { text: title }));
    box.appendChild(el("p", { text: err.message }));
    if (err.status === 401 || err.status === 403) {
      box.appendChild(el("p", { text: "This service needs an API key: enter it under “API key” at the top." }));
      $("settings").open = true;
    }
    if (Array.isArray(body.errors) && body.errors.length) {
      var ul = el("ul");
      body.errors.forEach(function (e) {
        ul.appendChild(el("li", { text: (e.loc ? e.loc + ": " : "") + (e.message || "") }));
      });
      box.appendChild(ul);
    }
    if (body.request_id) box.appendChild(el("p", { cls: "hint", text: "Request id: " + body.request_id }));
    box.hidden = false;
    box.focus && box.focus();
  }

  function submitTriage(ev) {
    ev.preventDefault();
    if (state.busy) return;
    $("error").hidden = true;
    if (!state.file) {
      showError(new ProblemError(0, { title: "No photo" }, "Choose or drop a photo of the lesion first."));
      return;
    }
    var topK = parseInt($("opt-top-k").value, 10);
    var options = {
      top_k: isFinite(topK) ? Math.min(20, Math.max(1, topK)) : 5,
      modality: $("opt-modality").value,
      explain: true,
      segment: true,
    };
    var form = new FormData();
    form.append("image", state.file, state.file.name || "photo.jpg");
    form.append("options", JSON.stringify(options));
    var symptoms = $("symptoms").value.trim();
    if (symptoms) form.append("symptoms", symptoms);
    var rf = collectRiskFactors();
    if (rf) form.append("risk_factors", JSON.stringify(rf));
    var photoURL = state.fileURL;
    var started = Date.now();
    setBusy(true, "Analysing the photo… heatmaps take a few seconds.");
    request("POST", "/v1/triage", form)
      .then(function (result) {
        state.photoFor = result.id;
        render(result, photoURL);
        setBusy(false, summary(result) + " (" + ((Date.now() - started) / 1000).toFixed(1) + " s)");
        $("results").focus({ preventScroll: true });
        try {
          history.replaceState(null, "", "/viewer?result=" + encodeURIComponent(result.id));
        } catch (e) {
          /* file:// or sandboxed: keep the URL */
        }
      })
      .catch(function (err) {
        setBusy(false, "");
        showError(err);
      });
  }

  /* share: the token a CDS Hooks card link carries for its one answer (sent as X-Result-Share). */
  function openById(id, share) {
    id = (id || "").trim();
    if (!id) return;
    $("error").hidden = true;
    setBusy(true, "Opening result " + id + "…");
    request("GET", "/v1/triage/" + encodeURIComponent(id), undefined, share ? { "X-Result-Share": share } : null)
      .then(function (result) {
        render(result, state.photoFor === result.id ? state.fileURL : null);
        setBusy(false, "Result " + result.id + " opened. " + summary(result));
      })
      .catch(function (err) {
        setBusy(false, "");
        showError(err);
      });
  }

  /* After a SMART EHR launch: the launch's answer, read with its HttpOnly launch cookie; no API key and
     no token in the page (the access token stays on the server). */
  function openLaunch() {
    $("error").hidden = true;
    setBusy(true, "Opening the EHR launch…");
    fetch("/viewer/launch/context", { credentials: "same-origin" })
      .then(function (resp) {
        return resp.json().catch(function () { return null; }).then(function (body) {
          if (!resp.ok) throw new ProblemError(resp.status, body, "The launch failed; launch again from the EHR.");
          return body;
        });
      })
      .then(function (body) {
        render(body.result, null);
        setBusy(false, "EHR launch: result " + body.result.id + " opened. " + summary(body.result));
      })
      .catch(function (err) {
        setBusy(false, "");
        showError(err);
      });
  }

  /* ------------------------------------------------------------------ rendering */

  /* One sentence for the live region: what a screen-reader user hears when the answer arrives. */
  function summary(result) {
    var parts = [];
    if (result.urgency) parts.push("Urgency " + (CATEGORY_LABEL[result.urgency.category] || words(result.urgency.category)) + ".");
    var top = (result.differentials || [])[0];
    if (top) parts.push("Most likely: " + (top.name || top.label) + ", " + pct(top.probability) + ".");
    if (result.uncertainty && result.uncertainty.needs_review) parts.push("Needs review.");
    return "Answer ready. " + parts.join(" ");
  }

  function render(result, photoURL) {
    state.result = result;
    $("empty").hidden = true;
    $("error").hidden = true;
    renderUrgency(result.urgency);
    renderReview(result.uncertainty);
    renderDifferentials(result);
    renderHeatmaps(result, photoURL);
    renderOutline(result.segmentation);
    renderShap(result.urgency_shap);
    renderFindings(result);
    renderMeta(result);
    $("disclaimer").textContent = result.disclaimer || "";
    $("result").hidden = false;
    $("open-id").value = result.id || "";
    // the review panel, annotation tool and past cases (clinician.js) follow the answer shown
    document.dispatchEvent(new CustomEvent("dermtriage:result", { detail: { result: result, photoURL: photoURL || null } }));
    var box = $("results");
    if (box.scrollIntoView && window.matchMedia && window.matchMedia("(max-width: 900px)").matches) {
      box.scrollIntoView({ block: "start" });
    }
  }

  function renderUrgency(u) {
    var box = clear($("urgency"));
    if (!u) {
      box.hidden = true;
      box.removeAttribute("data-category");
      $("urgency-na").hidden = false;
      return;
    }
    $("urgency-na").hidden = true;
    var cat = String(u.category || "");
    box.className = "urgency u-" + cat.replace(/[^a-z_]/g, "");
    box.setAttribute("data-category", cat);
    var head = el("div", { cls: "u-head" }, [
      el("span", { cls: "u-kicker", text: "Urgency" }),
      el("strong", { cls: "u-cat", text: CATEGORY_LABEL[cat] || words(cat) }),
      el("span", { cls: "u-score", text: "score " + num(u.score) }),
    ]);
    box.appendChild(head);
    if (u.next_step) {
      box.appendChild(el("p", { cls: "u-next" }, [el("strong", { text: "Next step: " }), u.next_step]));
    }
    var reasons = (u.reasons || []).filter(function (r) {
      return r && r.text;
    });
    if (reasons.length) {
      var ul = el("ul", { cls: "u-reasons" });
      reasons.forEach(function (r) {
        var li = el("li", { text: r.text });
        if (r.category) li.appendChild(el("span", { cls: "tag", text: CATEGORY_LABEL[r.category] || words(r.category) }));
        ul.appendChild(li);
      });
      box.appendChild(ul);
    }
    var extra = [];
    if (u.red_flags && u.red_flags.length) extra.push("Red flags: " + u.red_flags.map(words).join(", "));
    if (u.ng12) {
      var ng = "NICE NG12 checklist: " + u.ng12.points + " point" + (u.ng12.points === 1 ? "" : "s");
      if (u.ng12.items && u.ng12.items.length) ng += " (" + u.ng12.items.join(", ") + ")";
      if (u.ng12.suspected_cancer) ng += ", suspected-cancer pathway";
      extra.push(ng);
    }
    if (u.driving_condition) extra.push("Driven by: " + conditionName(u.driving_condition));
    extra.forEach(function (t) {
      box.appendChild(el("p", { cls: "u-extra", text: t }));
    });
    box.hidden = false;
  }

  function renderReview(unc) {
    var box = clear($("review"));
    if (!unc) {
      box.className = "review muted";
      box.appendChild(el("p", { text: "Uncertainty checks: not available for this answer." }));
      box.hidden = false;
      return;
    }
    var flags = unc.flags || [];
    box.className = "review " + (unc.needs_review ? "needs" : "ok");
    box.appendChild(
      el("strong", {
        text: unc.needs_review ? "Needs review by a clinician before acting on it" : "No review flag raised",
      })
    );
    var flagText = {};
    flags.forEach(function (f) {
      flagText[f.message] = true;
    });
    // a reason that repeats a flag's message is shown once, with the flag
    var reasons = (unc.review_reasons || []).filter(function (r) {
      return !flagText[r];
    });
    if (reasons.length) {
      var ul = el("ul");
      reasons.forEach(function (r) {
        ul.appendChild(el("li", { text: r }));
      });
      box.appendChild(ul);
    }
    if (flags.length) {
      var fl = el("ul", { cls: "flags" });
      flags.forEach(function (f) {
        var li = el("li", { attrs: { "data-flag": f.name } }, [
          el("span", { cls: "tag" + (f.requires_review ? " warn" : ""), text: FLAG_LABEL[f.name] || words(f.name) }),
          " " + (f.message || ""),
        ]);
        if (f.value !== null && f.value !== undefined && f.measure) {
          var v = typeof f.value === "number" ? num(f.value, 3) : f.value;
          var t = typeof f.threshold === "number" ? num(f.threshold, 3) : f.threshold;
          li.appendChild(
            el("span", { cls: "hint", text: " (" + words(f.measure) + " " + v + (t !== null && t !== undefined ? ", threshold " + t : "") + ")" })
          );
        }
        fl.appendChild(li);
      });
      box.appendChild(fl);
    }
    var stats = [];
    stats.push(unc.calibrated ? "calibrated probabilities" : "probabilities not calibrated");
    if (typeof unc.top2_margin === "number") stats.push("top-2 margin " + pct(unc.top2_margin));
    if (typeof unc.entropy === "number") stats.push("entropy " + num(unc.entropy) + " nats");
    box.appendChild(el("p", { cls: "hint", text: stats.join(" · ") }));
    box.hidden = false;
  }

  function conditionName(id) {
    var r = state.result;
    if (r && r.differentials) {
      for (var i = 0; i < r.differentials.length; i++) {
        if (r.differentials[i].condition_id === id || r.differentials[i].label === id) return r.differentials[i].name;
      }
    }
    if (state.conditionNames && state.conditionNames[id]) return state.conditionNames[id];
    return words(id);
  }

  function loadConditionNames() {
    if (state.conditionNames) return Promise.resolve(state.conditionNames);
    return request("GET", "/v1/conditions").then(
      function (data) {
        var map = {};
        ((data && data.conditions) || []).forEach(function (c) {
          map[c.id] = c.name;
        });
        state.conditionNames = map;
        return map;
      },
      function () {
        return null;
      }
    );
  }

  function renderDifferentials(result) {
    var list = clear($("differentials"));
    var unc = result.uncertainty;
    var inSet = {};
    ((unc && unc.prediction_set) || []).forEach(function (id) {
      inSet[id] = true;
    });
    var heat = result.heatmaps || [];
    (result.differentials || []).forEach(function (d, i) {
      var li = el("li", { cls: "diff", attrs: { "data-condition": d.condition_id || d.label } });
      var top = el("div", { cls: "diff-top" }, [
        el("span", { cls: "rank", text: String(d.rank || i + 1) }),
        el("span", { cls: "diff-name", text: d.name || d.label }),
        el("span", { cls: "prob", text: pct(d.probability) }),
      ]);
      li.appendChild(top);
      var bar = el("div", { cls: "bar", attrs: { "aria-hidden": "true" } });
      var fill = el("span");
      fill.style.width = Math.max(0, Math.min(100, (d.probability || 0) * 100)).toFixed(1) + "%";
      bar.appendChild(fill);
      li.appendChild(bar);
      var tags = el("div", { cls: "tags" });
      if (d.malignant === true) tags.appendChild(el("span", { cls: "tag danger", text: "malignant" }));
      if (unc && (inSet[d.condition_id] || inSet[d.label])) tags.appendChild(el("span", { cls: "tag set", text: "in prediction set" }));
      if (d.condition_id && d.validated_for_model === false) tags.appendChild(el("span", { cls: "tag warn", text: "not validated for this model" }));
      if (!d.condition_id) tags.appendChild(el("span", { cls: "tag", text: "caller's label" }));
      if (typeof d.image_probability === "number") tags.appendChild(el("span", { cls: "tag plain", text: "photo alone " + pct(d.image_probability) }));
      if (heat[i]) {
        var b = el("button", { cls: "link", text: "Show heatmap", attrs: { type: "button", "data-heat": String(i) } });
        b.addEventListener("click", function () {
          selectHeatmap(i, true);
        });
        tags.appendChild(b);
      }
      if (tags.firstChild) li.appendChild(tags);
      if (d.rank_change && d.rank_change.text) {
        li.appendChild(el("p", { cls: "rank-change rank-" + (d.rank_change.direction === "down" ? "down" : "up"), text: d.rank_change.text }));
      }
      if (d.look_alikes && d.look_alikes.length) {
        li.appendChild(
          el("p", { cls: "lookalikes", text: "Look-alikes: " + d.look_alikes.map(function (l) { return l.name || words(l.condition_id); }).join(", ") })
        );
      }
      if (d.codes && d.codes.length) {
        li.appendChild(
          el("p", {
            cls: "codes",
            text: d.codes
              .map(function (c) {
                var sys = /snomed/.test(c.system) ? "SNOMED CT" : /icd-10/.test(c.system) ? "ICD-10-CM" : c.system;
                return sys + " " + c.code;
              })
              .join(" · "),
          })
        );
      }
      list.appendChild(li);
    });

    var setBox = clear($("prediction-set"));
    if (unc && unc.prediction_set && unc.prediction_set.length) {
      var cov = typeof unc.coverage === "number" ? " (" + Math.round(unc.coverage * 100) + " % coverage)" : "";
      setBox.appendChild(el("h4", { text: "Prediction set" + cov }));
      setBox.appendChild(
        el("p", { cls: "hint", text: "The conditions that, together, contain the true one at the stated rate on validation photos." })
      );
      var chips = el("ul", { cls: "chips" });
      var render = function () {
        clear(chips);
        unc.prediction_set.forEach(function (id) {
          chips.appendChild(el("li", { cls: "chip", text: conditionName(id) }));
        });
      };
      render();
      setBox.appendChild(chips);
      setBox.hidden = false;
      var unknown = unc.prediction_set.some(function (id) {
        return conditionName(id) === words(id);
      });
      if (unknown) loadConditionNames().then(function (m) { if (m && state.result === result) render(); });
    } else if (unc) {
      setBox.appendChild(el("p", { cls: "hint", text: "No conformal prediction set in this answer." }));
      setBox.hidden = false;
    } else {
      setBox.appendChild(el("p", { cls: "not-available", text: "Prediction set: not available for this answer." }));
      setBox.hidden = false;
    }
  }

  function renderHeatmaps(result, photoURL) {
    var maps = result.heatmaps || [];
    var body = $("heatmap-body");
    if (!maps.length) {
      body.hidden = true;
      $("heatmap-na").hidden = false;
      return;
    }
    $("heatmap-na").hidden = true;
    body.hidden = false;
    var base = $("heat-base");
    var stage = $("heat-stage");
    base.onerror = function () {
      // a photo this browser cannot show (HEIC): the overlay, which blends photo and heat, stands alone
      base.hidden = true;
      stage.classList.add("no-base");
    };
    if (photoURL) {
      base.src = photoURL;
      base.alt = "The photo";
      base.hidden = false;
      stage.classList.remove("no-base");
    } else {
      base.removeAttribute("src");
      base.hidden = true;
      stage.classList.add("no-base");
    }
    var tabs = clear($("heat-tabs"));
    maps.forEach(function (m, i) {
      var d = (result.differentials || [])[i] || {};
      var id = "heat-tab-" + i;
      var input = el("input", { attrs: { type: "radio", name: "heat-tab", id: id, value: String(i) } });
      input.addEventListener("change", function () {
        if (input.checked) selectHeatmap(i, false);
      });
      tabs.appendChild(input);
      tabs.appendChild(el("label", { text: (d.name || d.label || "differential " + (i + 1)) + " " + pct(d.probability), attrs: { for: id } }));
    });
    selectHeatmap(0, false);
    applyOpacity();
  }

  function selectHeatmap(i, focus) {
    var r = state.result;
    var m = r && r.heatmaps && r.heatmaps[i];
    if (!m) return;
    var d = (r.differentials || [])[i] || {};
    var radio = $("heat-tab-" + i);
    if (radio) {
      radio.checked = true;
      if (focus) radio.focus();
    }
    var overlay = $("heat-overlay");
    overlay.src = "data:image/png;base64," + m.png_base64;
    overlay.alt = "Heatmap over the photo for " + (d.name || d.label || "differential " + (i + 1));
    overlay.setAttribute("data-index", String(i));
    $("heat-stage").style.aspectRatio = m.width + " / " + m.height;
    var peak = $("heat-peak");
    if (m.peak && m.photo_width && m.photo_height) {
      peak.style.left = ((m.peak[0] / m.photo_width) * 100).toFixed(2) + "%";
      peak.style.top = ((m.peak[1] / m.photo_height) * 100).toFixed(2) + "%";
      peak.hidden = false;
    } else {
      peak.hidden = true;
    }
    var cap = (d.name || d.label || "Differential " + (i + 1)) + " (rank " + (d.rank || i + 1) + ", " + pct(d.probability) + ")";
    cap += " · " + (m.method || "heatmap") + " · image–text similarity " + num(m.score, 3);
    $("heat-caption").textContent = cap;
    if (m.legend_png_base64) $("heat-legend").src = "data:image/png;base64," + m.legend_png_base64;
    var note = [];
    var c = m.covers;
    var cropped = c && (c.left > 0.5 || c.top > 0.5 || c.right < m.photo_width - 0.5 || c.bottom < m.photo_height - 0.5);
    if (cropped && c.note) note.push("Dashed box: " + c.note + ".");
    note.push("A cross marks the strongest spot.");
    if (!$("heat-stage").classList.contains("no-base")) {
      note.push("Slide the opacity to 0 to see the photo alone.");
    } else {
      note.push("The service does not keep photos; the overlay already blends the photo with the heat.");
    }
    $("heat-note").textContent = note.join(" ");
    if (focus && $("heatmap-card").scrollIntoView) $("heatmap-card").scrollIntoView({ block: "nearest" });
  }

  /* The lesion's outline (options.segment) over the photo, as an SVG layer in the working copy's pixels. */
  function renderOutline(seg) {
    var layer = $("heat-outline");
    while (layer.firstChild) layer.removeChild(layer.firstChild);
    var text = "";
    if (seg && seg.found && seg.polygon && seg.polygon.length > 2) {
      layer.setAttribute("viewBox", "0 0 " + seg.photo_width + " " + seg.photo_height);
      var poly = document.createElementNS("http://www.w3.org/2000/svg", "polygon");
      poly.setAttribute("points", seg.polygon.map(function (p) { return p.join(","); }).join(" "));
      layer.appendChild(poly);
      var parts = ["Outline: area " + (seg.area_mm2 != null ? num(seg.area_mm2, 1) + " mm²" : Math.round(seg.area_px) + " px")];
      parts.push("longest diameter " + (seg.longest_diameter_mm != null ? num(seg.longest_diameter_mm, 1) + " mm" : Math.round(seg.longest_diameter_px) + " px"));
      parts.push("border irregularity " + num(seg.border_irregularity, 2) + " (1 = a circle)");
      parts.push("colour variegation ΔE " + num(seg.colour_variegation, 1));
      text = parts.join(" · ") + (seg.reason ? ". " + seg.reason + "." : ".");
    } else if (seg) {
      text = "No lesion outline: " + (seg.reason || "nothing found") + ".";
    }
    $("outline-measures").textContent = text;
    applyOutline();
  }

  function applyOutline() {
    var layer = $("heat-outline");
    layer.hidden = !$("outline-toggle").checked || !layer.firstChild;
  }

  function applyOpacity() {
    var v = Number($("heat-opacity").value);
    $("heat-overlay").style.opacity = String(v / 100);
    $("heat-opacity-value").textContent = v + " %";
  }

  function renderShap(shap) {
    var box = clear($("shap"));
    if (!shap || !shap.values) {
      box.hidden = true;
      $("shap-na").hidden = false;
      return;
    }
    $("shap-na").hidden = true;
    var entries = Object.keys(shap.values)
      .map(function (k) {
        return [k, Number(shap.values[k])];
      })
      .filter(function (e) {
        return isFinite(e[1]);
      })
      .sort(function (a, b) {
        return Math.abs(b[1]) - Math.abs(a[1]);
      });
    // one scale for both signs; zero sits where the largest negative bar ends
    var maxPos = entries.reduce(function (m, e) {
      return Math.max(m, e[1]);
    }, 0);
    var maxNeg = entries.reduce(function (m, e) {
      return Math.max(m, -e[1]);
    }, 0);
    var span = maxPos + maxNeg || 1;
    var zero = (maxNeg / span) * 100;
    box.appendChild(
      el("p", {
        cls: "shap-sum",
        text: "Starting from " + num(shap.base_value) + " with nothing known, these moved the urgency score to " + num(shap.score) + ".",
      })
    );
    var list = el("ul", { cls: "shap-chart", attrs: { "aria-label": "Contributions to the urgency score" } });
    entries.forEach(function (e) {
      var name = featureLabel(e[0]);
      var v = e[1];
      var dir = v > 0 ? "raises" : v < 0 ? "lowers" : "does not change";
      var li = el("li", { cls: "shap-row", attrs: { "data-feature": e[0] } });
      var label = el("span", { cls: "shap-label" }, [el("span", { text: name })]);
      var inputs = shap.features && shap.features[e[0]];
      var shown = (inputs || []).filter(function (x) {
        return !MODEL_INPUTS[x];
      });
      if (shown.length && !(shown.length === 1 && shown[0] === e[0])) {
        label.appendChild(el("span", { cls: "shap-inputs", text: shown.map(featureLabel).join(", ") }));
      }
      var track = el("span", { cls: "shap-track", attrs: { "aria-hidden": "true" } });
      var bar = el("span", { cls: "shap-bar " + (v >= 0 ? "pos" : "neg") });
      var w = (Math.abs(v) / span) * 100;
      bar.style.width = w.toFixed(2) + "%";
      bar.style.left = (v >= 0 ? zero : zero - w).toFixed(2) + "%";
      var axis = el("span", { cls: "shap-zero" });
      axis.style.left = zero.toFixed(2) + "%";
      track.appendChild(axis);
      track.appendChild(bar);
      var val = el("span", { cls: "shap-value", text: (v > 0 ? "+" : v < 0 ? "−" : "") + Math.abs(v).toFixed(3) });
      li.appendChild(label);
      li.appendChild(track);
      li.appendChild(val);
      li.appendChild(el("span", { cls: "visually-hidden", text: " " + dir + " the score" }));
      list.appendChild(li);
    });
    box.appendChild(list);
    box.appendChild(
      el("p", { cls: "hint", text: "Red raises urgency, blue lowers it; base value + contributions = score (SHAP values, score units)." })
    );
    box.hidden = false;
  }

  var ROMAN = ["", "I", "II", "III", "IV", "V", "VI"];

  function factValue(name, v) {
    if (v === true) return "yes";
    if (v === false) return "no";
    if (name === "fitzpatrick" && ROMAN[v]) return ROMAN[v];
    if (name === "diameter_mm") return v + " mm";
    if (name === "lesion_duration_days") return Math.round(v) + " days";
    if (name === "age") return v + " years";
    return words(v);
  }

  function renderFindings(result) {
    var card = $("findings-card");
    var box = clear($("findings"));
    var f = result.findings;
    var rf = result.risk_factors;
    var any = false;
    if (f) {
      var present = f.present || [];
      var absent = f.absent || [];
      if (present.length) {
        box.appendChild(el("p", {}, [el("strong", { text: "Reported: " }), present.map(words).join(", ")]));
        any = true;
      }
      if (absent.length) {
        box.appendChild(el("p", {}, [el("strong", { text: "Denied: " }), absent.map(words).join(", ")]));
        any = true;
      }
      if (f.duration_text || typeof f.duration_days === "number") {
        var t = f.duration_text ? "“" + f.duration_text + "”" : "";
        if (typeof f.duration_days === "number") t += (t ? " ≈ " : "") + Math.round(f.duration_days) + " days";
        box.appendChild(el("p", {}, [el("strong", { text: "Duration: " }), t]));
        any = true;
      }
      if (typeof f.diameter_mm === "number") {
        box.appendChild(el("p", {}, [el("strong", { text: "Size: " }), num(f.diameter_mm, 1) + " mm"]));
        any = true;
      }
      if (!any) box.appendChild(el("p", { cls: "hint", text: "No finding recognised in the symptoms text." }));
      any = true;
    }
    if (rf && Object.keys(rf).length) {
      var dl = el("ul", { cls: "chips" });
      Object.keys(rf).forEach(function (k) {
        var v = rf[k];
        if (v === null || v === undefined) return;
        var text = featureLabel(k) + ": " + factValue(k, v);
        dl.appendChild(el("li", { cls: "chip", text: text }));
      });
      box.appendChild(el("h4", { text: "Risk factors received" }));
      box.appendChild(dl);
      any = true;
    }
    card.hidden = !any;
  }

  function dd(list, term, value) {
    if (value === null || value === undefined || value === "") return;
    list.appendChild(el("dt", { text: term }));
    list.appendChild(typeof value === "string" ? el("dd", { text: value }) : el("dd", {}, [value]));
  }

  function renderMeta(result) {
    var meta = clear($("meta"));
    var m = result.model || {};
    var modelLine = el("span", {}, [(m.name || "?") + " v" + (m.version || "?")]);
    if (m.card_url && /^\/[^/\\]/.test(m.card_url)) {
      modelLine.appendChild(document.createTextNode(" · "));
      modelLine.appendChild(el("a", { text: "model card (JSON)", attrs: { href: m.card_url, id: "model-card-link" } }));
    }
    dd(meta, "Model", modelLine);
    dd(meta, "Fusion", result.fusion_model || "photo only");
    dd(meta, "Taxonomy", result.taxonomy_version);
    dd(meta, "Ranking", (result.modality || "") + " photo, " + words(result.label_source || ""));
    if (result.scope_note) dd(meta, "Scope", result.scope_note);
    var unc = result.uncertainty;
    if (unc) dd(meta, "Calibration", unc.calibrated ? unc.calibration_id || "calibrated" : "not calibrated");
    var img = result.image;
    if (img) {
      var parts = [String(img.format || "").toUpperCase() + " " + img.width + "×" + img.height];
      if (img.quality && typeof img.quality.blur_laplacian_var === "number") parts.push("sharpness " + num(img.quality.blur_laplacian_var, 0));
      if (img.metadata_stripped && img.metadata_stripped.length) parts.push("removed: " + img.metadata_stripped.join(", "));
      dd(meta, "Photo", parts.join(" · "));
    }
    if (result.timings) dd(meta, "Time", num(result.timings.total_ms, 0) + " ms");
    var link = el("a", { text: result.id, attrs: { href: "/viewer?result=" + encodeURIComponent(result.id), id: "result-link" } });
    dd(meta, "Result id", link);
    $("model-card").open = false;
    clear($("model-card-body")).appendChild(el("p", { cls: "hint", text: "Open to load the card." }));
    $("model-card").setAttribute("data-loaded", "");
  }

  function loadModelCard() {
    var details = $("model-card");
    var r = state.result;
    if (!details.open || !r || !r.model || details.getAttribute("data-loaded") === r.model.name) return;
    var body = clear($("model-card-body"));
    body.appendChild(el("p", { cls: "hint", text: "Loading…" }));
    request("GET", "/v1/models/" + encodeURIComponent(r.model.name))
      .then(function (card) {
        details.setAttribute("data-loaded", r.model.name);
        clear(body);
        if (card.description) body.appendChild(el("p", { text: card.description }));
        var dl = el("dl", { cls: "meta-list" });
        dd(dl, "Family", card.family);
        dd(dl, "License", card.license);
        dd(dl, "Trained on", card.training_data);
        if (card.validated_conditions && card.validated_conditions.length) dd(dl, "Validated for", card.validated_conditions.map(conditionName).join(", "));
        if (card.underrepresented_fitzpatrick && card.underrepresented_fitzpatrick.length) {
          dd(dl, "Few photos of skin types", card.underrepresented_fitzpatrick.join(", "));
        }
        body.appendChild(dl);
        if (card.limitations && card.limitations.length) {
          body.appendChild(el("h4", { text: "Limitations" }));
          var ul = el("ul");
          card.limitations.forEach(function (l) {
            ul.appendChild(el("li", { text: l }));
          });
          body.appendChild(ul);
        }
      })
      .catch(function (err) {
        clear(body).appendChild(el("p", { cls: "error-inline", text: "Could not load the model card: " + err.message }));
      });
  }

  /* ------------------------------------------------------------------ for clinician.js */

  window.dermtriage = {
    el: el,
    clear: clear,
    words: words,
    pct: pct,
    request: request,
    authHeaders: authHeaders,
    showError: showError,
    setBusy: setBusy,
    current: function () {
      return state.result ? { result: state.result, photoURL: state.photoFor === state.result.id ? state.fileURL : null } : null;
    },
    /* show a stored answer (a reopened case); its photo when this tab triaged it, else `photoURL` */
    show: function (result, photoURL) {
      render(result, state.photoFor === result.id ? state.fileURL : photoURL || null);
      setBusy(false, "Case " + result.id + " opened. " + summary(result));
    },
  };

  /* ------------------------------------------------------------------ start */

  function init() {
    expandTristates();
    var keyInput = $("api-key");
    keyInput.value = apiKey();
    keyInput.addEventListener("change", function () {
      try {
        sessionStorage.setItem(KEY_STORE, keyInput.value.trim());
      } catch (e) {
        /* storage disabled: the key lives in the field only */
      }
    });
    $("api-key-clear").addEventListener("click", function () {
      keyInput.value = "";
      try {
        sessionStorage.removeItem(KEY_STORE);
      } catch (e) {
        /* nothing stored */
      }
    });
    $("photo-input").addEventListener("change", onFileInput);
    $("camera-input").addEventListener("change", onFileInput);
    wireDrop();
    $("triage-form").addEventListener("submit", submitTriage);
    $("triage-form").addEventListener("reset", function () {
      state.file = null;
      $("photo-preview").hidden = true;
      $("photo-preview").removeAttribute("src");
      $("photo-name").textContent = "";
      $("drop-text").textContent = "Drop a photo here, or";
      setTimeout(function () {
        Array.prototype.forEach.call(document.querySelectorAll("fieldset.tri input[value='']"), function (i) {
          i.checked = true;
        });
      }, 0);
    });
    $("open-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var id = $("open-id").value.trim();
      if (!id) return;
      try {
        history.replaceState(null, "", "/viewer?result=" + encodeURIComponent(id));
      } catch (e) {
        /* keep the URL */
      }
      openById(id);
    });
    $("heat-opacity").addEventListener("input", applyOpacity);
    $("outline-toggle").addEventListener("change", applyOutline);
    $("model-card").addEventListener("toggle", loadModelCard);
    var params = new URLSearchParams(window.location.search);
    var id = params.get("result");
    if (params.get("launch") === "smart") openLaunch();
    else if (id) openById(id, params.get("share"));
    document.documentElement.setAttribute("data-viewer-ready", "true");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
