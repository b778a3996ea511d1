/* dermtriage clinician viewer, the clinician's side: review panel, annotation tool, past cases and
 * the monitoring chart. Plain JavaScript over viewer.js's helpers (window.dermtriage); same-origin
 * calls only, the API key as viewer.js keeps it (sessionStorage, sent as X-API-Key, never in a URL).
 * Server text is written with textContent only; shapes are SVG elements made with createElementNS.
 * Coordinates are in the photo's pixels as the service decoded it (image.width x image.height): the
 * SVG's viewBox is that size, and a mouse position is mapped from the displayed size.
 */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var PAGE = 10;
  var CATEGORY_LABEL = { emergency: "Emergency", urgent: "Urgent", soon: "Soon", routine: "Routine", self_care: "Self-care" };
  var REVIEW_FIELDS = ["agrees", "diagnosis", "confidence", "urgency_override", "urgency_reason", "note"];
  var ANN_FIELDS = { label: "label", box: "shape", points: "shape", kind: "shape", subtype: "subtype" };

  var dt = window.dermtriage;
  var el = dt.el;
  var clear = dt.clear;
  var c = {
    caseId: null,
    result: null,
    width: 0,
    height: 0,
    photoURL: null,
    taxonomy: null, // [{id, name, synonyms}]
    names: {},
    annotations: [],
    draft: null, // {kind, points:[[x,y]], box:[x,y,w,h], closed}
    drag: null,
    pastOffset: 0,
    loadToken: 0,
  };

  function $(id) {
    return document.getElementById(id);
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) {
      node.setAttribute(k, String(attrs[k]));
    });
    return node;
  }

  function name(id) {
    return (id && c.names[id]) || (id ? dt.words(id) : "");
  }

  function r1(x) {
    return Math.round(x * 10) / 10;
  }

  /* ------------------------------------------------------------------ taxonomy type-ahead */

  function loadTaxonomy() {
    if (c.taxonomy) return Promise.resolve(c.taxonomy);
    return dt.request("GET", "/v1/conditions").then(function (data) {
      c.taxonomy = (data && data.conditions) || [];
      var list = clear($("conditions-list"));
      c.taxonomy.forEach(function (cond) {
        c.names[cond.id] = cond.name;
        var syn = (cond.synonyms || []).slice(0, 3).join(", ");
        list.appendChild(el("option", { attrs: { value: cond.id, label: cond.name + (syn ? " (" + syn + ")" : "") } }));
      });
      return c.taxonomy;
    });
  }

  /* A typed id, name or synonym (any case) -> the taxonomy id; null when it names none. */
  function resolve(text) {
    var t = String(text || "").trim().toLowerCase();
    if (!t || !c.taxonomy) return null;
    for (var i = 0; i < c.taxonomy.length; i++) {
      var cond = c.taxonomy[i];
      if (cond.id.toLowerCase() === t || String(cond.name).toLowerCase() === t) return cond.id;
    }
    for (var j = 0; j < c.taxonomy.length; j++) {
      if ((c.taxonomy[j].synonyms || []).some(function (s) { return String(s).toLowerCase() === t; })) return c.taxonomy[j].id;
    }
    return null;
  }

  function wirePicker(input, pick) {
    function show() {
      var v = input.value.trim();
      var id = resolve(v);
      if (!v) pick.textContent = "";
      else if (id) pick.textContent = "→ " + name(id) + " (" + id + ")";
      else {
        var t = v.toLowerCase();
        // names and ids that start with the text first, then those that contain it, then synonyms
        var rank = function (cond) {
          var n = String(cond.name).toLowerCase();
          if (n.indexOf(t) === 0 || cond.id.indexOf(t) === 0) return 0;
          if (n.indexOf(t) > 0 || cond.id.indexOf(t) > 0) return 1;
          return (cond.synonyms || []).some(function (x) { return String(x).toLowerCase().indexOf(t) >= 0; }) ? 2 : 3;
        };
        var hits = (c.taxonomy || [])
          .map(function (cond, i) { return [rank(cond), i, cond]; })
          .filter(function (h) { return h[0] < 3; })
          .sort(function (a, b) { return a[0] - b[0] || a[1] - b[1]; })
          .map(function (h) { return h[2]; });
        pick.textContent = hits.length ? hits.length + " match: " + hits.slice(0, 4).map(function (h) { return h.name; }).join(", ") : "no condition of the taxonomy matches";
      }
    }
    input.addEventListener("input", show);
    input.addEventListener("change", show);
  }

  /* ------------------------------------------------------------------ field errors (problem+json) */

  function resetErrors(prefix, fields) {
    fields.concat(["form"]).forEach(function (f) {
      var p = $(prefix + "-err-" + f);
      if (p) {
        p.textContent = "";
        p.hidden = true;
      }
    });
    Array.prototype.forEach.call(document.querySelectorAll("[data-err-prefix='" + prefix + "'][aria-invalid]"), function (n) {
      n.removeAttribute("aria-invalid");
    });
  }

  function fieldError(prefix, field, text, control) {
    var p = $(prefix + "-err-" + field) || $(prefix + "-err-form");
    p.textContent = p.textContent ? p.textContent + " " + text : text;
    p.hidden = false;
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.setAttribute("data-err-prefix", prefix);
    }
  }

  /* Each `errors[].loc` shown next to the field it names; the rest (and a problem without errors) at the form. */
  function showProblem(prefix, err, fieldOf, controls) {
    var body = err.body || {};
    var errors = Array.isArray(body.errors) ? body.errors : [];
    if (!errors.length) {
      var msg = (body.title ? body.title + ": " : "") + err.message;
      if (err.status === 404) msg = "This case is not held for you (or not saved yet). " + msg;
      fieldError(prefix, "form", msg);
      return;
    }
    errors.forEach(function (e) {
      var parts = String(e.loc || "").split(".");
      var field = null;
      for (var i = 0; i < parts.length && !field; i++) field = fieldOf(parts[i]);
      fieldError(prefix, field || "form", (field ? "" : (e.loc || "") + ": ") + (e.message || "invalid"), field && controls[field]);
    });
  }

  /* ------------------------------------------------------------------ the case shown */

  function onResult(ev) {
    var d = ev.detail || {};
    if (!d.result || !d.result.id) return;
    var r = d.result;
    c.result = r;
    c.caseId = r.id;
    c.width = (r.image && r.image.width) || 0;
    c.height = (r.image && r.image.height) || 0;
    c.photoURL = d.photoURL;
    c.annotations = [];
    c.draft = null;
    var top = (r.differentials || [])[0];
    $("rv-top").textContent = top ? " (" + (top.name || top.label) + ")" : "";
    $("review-form").reset();
    resetErrors("rv", REVIEW_FIELDS);
    resetErrors("ann", ["label", "shape", "subtype"]);
    $("rv-diagnosis-pick").textContent = "";
    $("ann-label-pick").textContent = "";
    buildStage();
    loadTaxonomy().catch(function () { /* shown as a problem when saving */ });
    loadCase(c.caseId, 0);
  }

  /* Reviews and annotations of the case; a fresh answer's case may still be on the write queue: retry a 404. */
  function loadCase(id, tries) {
    var token = ++c.loadToken;
    $("rv-case-note").textContent = tries ? "" : "Loading this case's reviews…";
    Promise.all([
      dt.request("GET", "/v1/cases/" + encodeURIComponent(id) + "/reviews"),
      dt.request("GET", "/v1/cases/" + encodeURIComponent(id) + "/annotations"),
    ]).then(
      function (both) {
        if (token !== c.loadToken) return;
        $("rv-case-note").textContent = "";
        renderReviews(both[0] || []);
        c.annotations = both[1] || [];
        drawSaved();
        listAnnotations();
        document.documentElement.setAttribute("data-case-loaded", id);
      },
      function (err) {
        if (token !== c.loadToken) return;
        if (err.status === 404 && tries < 8) {
          setTimeout(function () { if (token === c.loadToken) loadCase(id, tries + 1); }, 750);
          return;
        }
        renderReviews([]);
        listAnnotations();
        $("rv-case-note").textContent =
          err.status === 404
            ? "This answer is not kept as a case for you, so it cannot be reviewed here."
            : "Reviews and annotations are unavailable: " + err.message;
      }
    );
  }

  /* ------------------------------------------------------------------ review panel */

  function renderReviews(reviews) {
    var ul = clear($("rv-list"));
    if (!reviews.length) {
      ul.appendChild(el("li", { cls: "hint", text: "No review yet." }));
      return;
    }
    reviews.forEach(function (rv) {
      var head = (rv.agrees ? "Agrees" : "Disagrees") + " · confidence " + rv.confidence;
      if (rv.diagnosis) head += " · diagnosis: " + name(rv.diagnosis);
      if (rv.urgency_override) head += " · urgency: " + (CATEGORY_LABEL[rv.urgency_override] || rv.urgency_override);
      var li = el("li", { cls: "rv-item", attrs: { "data-review-id": rv.id } }, [el("strong", { text: head })]);
      if (rv.urgency_reason) li.appendChild(el("p", { text: "Reason: " + rv.urgency_reason }));
      if (rv.note) li.appendChild(el("p", { text: rv.note }));
      li.appendChild(el("p", { cls: "hint", text: rv.reviewer + ", " + new Date(rv.created_at).toLocaleString() }));
      ul.appendChild(li);
    });
  }

  function submitReview(ev) {
    ev.preventDefault();
    if (!c.caseId) return;
    resetErrors("rv", REVIEW_FIELDS);
    var checked = document.querySelector("input[name=rv-agrees]:checked");
    var controls = {
      agrees: $("rv-agrees-yes"),
      diagnosis: $("rv-diagnosis"),
      confidence: $("rv-confidence"),
      urgency_override: $("rv-urgency"),
      urgency_reason: $("rv-reason"),
      note: $("rv-note"),
    };
    if (!checked) {
      fieldError("rv", "agrees", "Choose agree or disagree.", controls.agrees);
      controls.agrees.focus();
      return;
    }
    var body = { agrees: checked.value === "true", confidence: $("rv-confidence").value };
    var dx = $("rv-diagnosis").value.trim();
    if (dx) body.diagnosis = resolve(dx) || dx; // an unknown label is the service's 422, shown at the field
    if ($("rv-urgency").value) body.urgency_override = $("rv-urgency").value;
    if ($("rv-reason").value.trim()) body.urgency_reason = $("rv-reason").value.trim();
    if ($("rv-note").value.trim()) body.note = $("rv-note").value.trim();
    var id = c.caseId;
    $("rv-save").disabled = true;
    dt.request("POST", "/v1/cases/" + encodeURIComponent(id) + "/reviews", JSON.stringify(body), { "Content-Type": "application/json" })
      .then(function () {
        $("review-form").reset();
        $("rv-diagnosis-pick").textContent = "";
        return dt.request("GET", "/v1/cases/" + encodeURIComponent(id) + "/reviews");
      })
      .then(function (reviews) {
        if (id === c.caseId) renderReviews(reviews || []);
        $("rv-case-note").textContent = "Review saved.";
      })
      .catch(function (err) {
        showProblem("rv", err, function (f) { return REVIEW_FIELDS.indexOf(f) >= 0 ? f : null; }, controls);
        var bad = document.querySelector("#review-form [aria-invalid=true]");
        if (bad) bad.focus();
      })
      .then(function () {
        $("rv-save").disabled = false;
      });
  }

  /* ------------------------------------------------------------------ annotation tool */

  function buildStage() {
    var stage = clear($("ann-stage"));
    var usable = c.width > 0 && c.height > 0;
    stage.hidden = !usable;
    if (!usable) return;
    stage.style.aspectRatio = c.width + " / " + c.height;
    stage.classList.toggle("no-photo", !c.photoURL);
    if (c.photoURL) {
      var img = el("img", { attrs: { id: "ann-photo", alt: "The photo to annotate", src: c.photoURL, draggable: "false" } });
      stage.appendChild(img);
    } else {
      stage.appendChild(el("p", { cls: "ann-placeholder", text: "Photo not kept: shapes are drawn at their place in a " + c.width + "×" + c.height + " frame." }));
    }
    var s = svg("svg", {
      id: "ann-svg",
      viewBox: "0 0 " + c.width + " " + c.height,
      preserveAspectRatio: "none",
      "data-width": c.width,
      "data-height": c.height,
      role: "img",
      "aria-label": "Annotations over the photo",
    });
    s.appendChild(svg("g", { id: "ann-saved" }));
    s.appendChild(svg("g", { id: "ann-draft-layer" }));
    stage.appendChild(s);
    var drawable = !!c.photoURL;
    ["ann-close", "ann-undo", "ann-clear", "ann-mode-polygon", "ann-mode-box"].forEach(function (i) {
      $(i).disabled = !drawable;
    });
    var seg = c.result && c.result.segmentation;
    $("ann-from-outline").disabled = !(drawable && seg && seg.found && seg.polygon && seg.polygon.length > 2);
    $("ann-photo-note").textContent = drawable
      ? "Coordinates are kept in the photo's pixels (" + c.width + "×" + c.height + ")."
      : "The photo is not in this tab (and not kept by the service): shapes cannot be drawn; lesion tags can still be saved, and saved shapes are listed below.";
    if (drawable) {
      s.classList.add("drawable");
      s.addEventListener("pointerdown", onDown);
      s.addEventListener("pointermove", onMove);
      s.addEventListener("pointerup", onUp);
      s.addEventListener("click", onClick);
      s.addEventListener("dblclick", function (ev) {
        ev.preventDefault();
        closePolygon();
      });
    }
    drawDraft();
  }

  /* The segmenter's proposed outline as a closed draft polygon in the photo's pixels (the outline is in
     the working copy's): the clinician corrects it (drag a point, undo, add) instead of drawing from scratch. */
  function startFromOutline() {
    var seg = c.result && c.result.segmentation;
    if (!seg || !seg.polygon || seg.polygon.length < 3) return;
    var sx = c.width / seg.photo_width;
    var sy = c.height / seg.photo_height;
    $("ann-mode-polygon").checked = true;
    c.draft = {
      kind: "polygon",
      closed: true,
      proposed: true,
      points: seg.polygon.map(function (p) { return [r1(p[0] * sx), r1(p[1] * sy)]; }),
    };
    drawDraft();
  }

  /* mouse -> photo pixels, from the displayed size */
  function toPhoto(ev) {
    var rect = $("ann-svg").getBoundingClientRect();
    var x = ((ev.clientX - rect.left) / rect.width) * c.width;
    var y = ((ev.clientY - rect.top) / rect.height) * c.height;
    return [r1(Math.min(c.width, Math.max(0, x))), r1(Math.min(c.height, Math.max(0, y)))];
  }

  function mode() {
    return $("ann-mode-box").checked ? "box" : "polygon";
  }

  function onClick(ev) {
    if (mode() !== "polygon" || ev.detail > 1) return; // the second click of a double-click closes instead
    if (c.moved) {
      c.moved = false; // the click that ends dragging a vertex adds no point
      return;
    }
    if (!c.draft || c.draft.kind !== "polygon" || c.draft.closed) c.draft = { kind: "polygon", points: [], closed: false };
    c.draft.points.push(toPhoto(ev));
    drawDraft();
  }

  function closePolygon() {
    var d = c.draft;
    if (!d || d.kind !== "polygon") return;
    if (d.points.length < 3) {
      fieldError("ann", "shape", "A polygon needs at least 3 points.");
      return;
    }
    d.closed = true;
    resetErrors("ann", ["shape"]);
    drawDraft();
  }

  /* a closed polygon's vertex near the pointer (within 2 % of the photo's long side), or -1 */
  function vertexAt(p) {
    var d = c.draft;
    if (!d || d.kind !== "polygon" || !d.closed) return -1;
    var reach = Math.max(c.width, c.height) / 50;
    var best = -1;
    d.points.forEach(function (q, i) {
      var dist = Math.hypot(q[0] - p[0], q[1] - p[1]);
      if (dist <= reach && (best < 0 || dist < Math.hypot(d.points[best][0] - p[0], d.points[best][1] - p[1]))) best = i;
    });
    return best;
  }

  function onDown(ev) {
    if (mode() === "polygon" && ev.button === 0) {
      var hit = vertexAt(toPhoto(ev));
      if (hit < 0) return;
      ev.preventDefault();
      c.vertex = hit;
      c.moved = true; // pressing a vertex never starts a new polygon
      try {
        ev.currentTarget.setPointerCapture(ev.pointerId);
      } catch (e) {
        /* capture is a nicety */
      }
      return;
    }
    if (mode() !== "box" || ev.button !== 0) return;
    ev.preventDefault();
    c.drag = toPhoto(ev);
    c.draft = { kind: "box", box: [c.drag[0], c.drag[1], 0, 0] };
    try {
      ev.currentTarget.setPointerCapture(ev.pointerId);
    } catch (e) {
      /* capture is a nicety */
    }
    drawDraft();
  }

  function onMove(ev) {
    if (c.vertex != null) {
      var q = toPhoto(ev);
      c.draft.points[c.vertex] = [r1(Math.min(c.width, Math.max(0, q[0]))), r1(Math.min(c.height, Math.max(0, q[1])))];
      c.moved = true;
      drawDraft();
      return;
    }
    if (!c.drag) return;
    var p = toPhoto(ev);
    var x0 = Math.min(c.drag[0], p[0]);
    var y0 = Math.min(c.drag[1], p[1]);
    c.draft.box = [x0, y0, r1(Math.abs(p[0] - c.drag[0])), r1(Math.abs(p[1] - c.drag[1]))];
    drawDraft();
  }

  function onUp(ev) {
    if (c.vertex != null) {
      c.vertex = null;
      return;
    }
    if (!c.drag) return;
    onMove(ev);
    c.drag = null;
    if (c.draft.box[2] < 1 || c.draft.box[3] < 1) c.draft = null;
    drawDraft();
  }

  function drawDraft() {
    var layer = $("ann-draft-layer");
    if (!layer) return;
    clear(layer);
    var d = c.draft;
    var text = "No shape drawn.";
    if (d && d.kind === "polygon" && d.points.length) {
      var pts = d.points.map(function (p) { return p.join(","); }).join(" ");
      layer.appendChild(svg(d.closed ? "polygon" : "polyline", { class: "ann-shape draft", points: pts, "data-kind": "polygon" }));
      d.points.forEach(function (p) {
        layer.appendChild(svg("circle", { class: "ann-vertex", cx: p[0], cy: p[1], r: Math.max(c.width, c.height) / 150 }));
      });
      text = "Polygon, " + d.points.length + " point" + (d.points.length === 1 ? "" : "s") + (d.closed ? ", closed: ready to save." : ": double-click or “Close polygon” to finish.");
    } else if (d && d.kind === "box") {
      layer.appendChild(svg("rect", { class: "ann-shape draft", x: d.box[0], y: d.box[1], width: d.box[2], height: d.box[3], "data-kind": "box" }));
      text = "Box " + d.box.join(", ") + " (x, y, width, height in photo pixels).";
    }
    $("ann-draft").textContent = text;
  }

  function drawSaved() {
    var layer = $("ann-saved");
    if (!layer) return;
    clear(layer);
    c.annotations.forEach(function (a) {
      var node = null;
      if (a.kind === "polygon" && a.points) {
        node = svg("polygon", { points: a.points.map(function (p) { return p.join(","); }).join(" ") });
      } else if (a.kind === "box" && a.box) {
        node = svg("rect", { x: a.box[0], y: a.box[1], width: a.box[2], height: a.box[3] });
      } else if (a.kind === "keypoints" && a.points) {
        node = svg("g", {});
        a.points.forEach(function (p) {
          node.appendChild(svg("circle", { cx: p[0], cy: p[1], r: Math.max(c.width, c.height) / 120 }));
        });
      }
      if (!node) return;
      node.setAttribute("class", "ann-shape saved");
      node.setAttribute("data-annotation-id", String(a.id));
      node.setAttribute("data-kind", a.kind);
      var t = svg("title", {});
      t.textContent = name(a.label) + " (" + a.kind + ")";
      node.appendChild(t);
      layer.appendChild(node);
    });
  }

  function tagText(t) {
    if (!t) return "";
    var parts = [];
    if (t.subtype) parts.push("subtype " + t.subtype);
    if (t.severity) parts.push(t.severity);
    if (t.body_site) parts.push(dt.words(t.body_site));
    if (t.fitzpatrick) parts.push("Fitzpatrick " + t.fitzpatrick);
    return parts.join(", ");
  }

  function listAnnotations() {
    var ul = clear($("ann-list"));
    if (!c.annotations.length) {
      ul.appendChild(el("li", { cls: "hint", text: "No annotation yet." }));
      return;
    }
    c.annotations.forEach(function (a) {
      var geo =
        a.kind === "box" && a.box
          ? "box " + a.box.map(function (v) { return r1(v); }).join(", ")
          : a.points
            ? a.kind + ", " + a.points.length + " point" + (a.points.length === 1 ? "" : "s") + ": " + a.points.map(function (p) { return "(" + r1(p[0]) + ", " + r1(p[1]) + ")"; }).join(" ")
            : "lesion tags";
      var line = (a.label ? name(a.label) + " · " : "") + geo;
      var tags = tagText(a.tags);
      var li = el("li", { attrs: { "data-annotation-id": a.id, "data-kind": a.kind } }, [el("strong", { text: line })]);
      if (tags) li.appendChild(el("p", { text: "Tags: " + tags }));
      li.appendChild(el("p", { cls: "hint", text: a.annotator + ", " + new Date(a.created_at).toLocaleString() }));
      ul.appendChild(li);
    });
  }

  function submitAnnotation(ev) {
    ev.preventDefault();
    if (!c.caseId) return;
    resetErrors("ann", ["label", "shape", "subtype"]);
    var controls = { label: $("ann-label"), subtype: $("ann-subtype"), shape: null };
    var tags = {};
    if ($("ann-subtype").value.trim()) tags.subtype = $("ann-subtype").value.trim();
    if ($("ann-severity").value) tags.severity = $("ann-severity").value;
    if ($("ann-body-site").value) tags.body_site = $("ann-body-site").value;
    if ($("ann-fitzpatrick").value) tags.fitzpatrick = $("ann-fitzpatrick").value;
    var hasTags = Object.keys(tags).length > 0;
    var d = c.draft;
    var body;
    if (d && d.kind === "polygon") {
      if (!d.closed) {
        fieldError("ann", "shape", "Finish the polygon first (double-click, or “Close polygon”).");
        return;
      }
      body = { kind: "polygon", points: d.points };
    } else if (d && d.kind === "box") {
      body = { kind: "box", box: d.box };
    } else if (hasTags) {
      body = { kind: "tags" };
    } else {
      fieldError("ann", "shape", "Draw a box or a polygon on the photo, or set lesion tags.");
      return;
    }
    var label = $("ann-label").value.trim();
    if (label) body.label = resolve(label) || label; // an unknown label: the service's 422 at the field
    if (hasTags) body.tags = tags;
    var id = c.caseId;
    $("ann-save").disabled = true;
    dt.request("POST", "/v1/cases/" + encodeURIComponent(id) + "/annotations", JSON.stringify(body), { "Content-Type": "application/json" })
      .then(function (saved) {
        if (id !== c.caseId) return;
        c.annotations.push(saved);
        c.draft = null;
        $("ann-form").reset();
        $("ann-label-pick").textContent = "";
        drawDraft();
        drawSaved();
        listAnnotations();
        $("ann-draft").textContent = "Annotation saved.";
      })
      .catch(function (err) {
        showProblem("ann", err, function (f) { return ANN_FIELDS[f] || null; }, controls);
      })
      .then(function () {
        $("ann-save").disabled = false;
      });
  }

  /* ------------------------------------------------------------------ past cases */

  function loadPast(offset) {
    c.pastOffset = Math.max(0, offset);
    $("past-status").textContent = "Loading…";
    dt.request("GET", "/v1/cases?limit=" + PAGE + "&offset=" + c.pastOffset)
      .then(function (page) {
        var ol = clear($("past-list"));
        var items = (page && page.items) || [];
        $("past-status").textContent = page.total ? page.total + " case" + (page.total === 1 ? "" : "s") + " kept." : "No case kept yet.";
        items.forEach(function (it) {
          var when = new Date(it.created_at).toLocaleString();
          var btn = el("button", { cls: "link", attrs: { type: "button", "data-case-id": it.id } }, [
            el("span", { text: when }),
            el("span", { cls: "hint", text: " · " + it.id.slice(0, 8) + (it.patient_ref ? " · patient " + it.patient_ref : "") }),
          ]);
          btn.addEventListener("click", function () {
            openCase(it.id);
          });
          var li = el("li", { attrs: { "data-case-id": it.id } }, [btn]);
          if (it.reviewed) li.appendChild(el("span", { cls: "tag", text: "reviewed" }));
          if (it.photo_stored) li.appendChild(el("span", { cls: "tag", text: "photo kept" }));
          ol.appendChild(li);
        });
        $("past-pager").hidden = page.total <= PAGE;
        $("past-prev").disabled = c.pastOffset === 0;
        $("past-next").disabled = c.pastOffset + PAGE >= page.total;
        $("past-page").textContent = page.total ? c.pastOffset + 1 + "–" + (c.pastOffset + items.length) + " of " + page.total : "";
      })
      .catch(function (err) {
        clear($("past-list"));
        $("past-status").textContent = "Past cases unavailable: " + err.message + (err.status === 401 ? " (enter the API key at the top)" : "");
      });
  }

  /* The photo the service kept with consent (GET /v1/cases/{id}/photo, with the key as a header): an object URL, or null. */
  function storedPhoto(id) {
    return fetch("/v1/cases/" + encodeURIComponent(id) + "/photo", { headers: dt.authHeaders(), credentials: "same-origin" })
      .then(function (resp) {
        return resp.ok ? resp.blob() : null;
      })
      .then(function (blob) {
        return blob ? URL.createObjectURL(blob) : null;
      })
      .catch(function () {
        return null;
      });
  }

  function openCase(id) {
    dt.setBusy(true, "Opening case " + id + "…");
    dt.request("GET", "/v1/cases/" + encodeURIComponent(id))
      .then(function (kase) {
        var photo = kase.photo_stored ? storedPhoto(id) : Promise.resolve(null);
        return photo.then(function (url) {
          dt.show(kase.answer, url);
          try {
            history.replaceState(null, "", "/viewer?result=" + encodeURIComponent(id));
          } catch (e) {
            /* keep the URL */
          }
        });
      })
      .catch(function (err) {
        dt.setBusy(false, "");
        dt.showError(err);
      });
  }

  /* ------------------------------------------------------------------ monitoring chart */

  function loadMonitoring(ev) {
    if (ev) ev.preventDefault();
    var err = $("mon-err");
    err.hidden = true;
    $("mon-weeks").removeAttribute("aria-invalid");
    var weeks = $("mon-weeks").value.trim();
    dt.request("GET", "/v1/monitoring?weeks=" + encodeURIComponent(weeks))
      .then(function (data) {
        drawChart(data.weeks || []);
        $("mon-figure").hidden = false;
      })
      .catch(function (e) {
        var b = e.body || {};
        err.textContent = "Weeks: " + ((b.errors && b.errors[0] && b.errors[0].message) || e.message) + " (1 to 104).";
        err.hidden = false;
        $("mon-weeks").setAttribute("aria-invalid", "true");
      });
  }

  function drawChart(weeks) {
    var W = 640;
    var H = 240;
    var L = 36;
    var R = 36;
    var T = 12;
    var B = 34;
    var n = weeks.length || 1;
    var step = (W - L - R) / n;
    var max = weeks.reduce(function (m, w) { return Math.max(m, w.cases); }, 0) || 1;
    var total = weeks.reduce(function (m, w) { return m + w.cases; }, 0);
    var chart = svg("svg", {
      viewBox: "0 0 " + W + " " + H,
      class: "mon-svg",
      role: "img",
      "data-weeks": weeks.length,
      "aria-label": weeks.length + " weeks, " + total + " cases; the table below has the figures",
    });
    var yOf = function (v) { return T + (H - T - B) * (1 - v); };
    [0, 0.5, 1].forEach(function (v) {
      chart.appendChild(svg("line", { class: "mon-grid", x1: L, x2: W - R, y1: yOf(v), y2: yOf(v) }));
      var lab = svg("text", { class: "mon-axis", x: W - R + 4, y: yOf(v) + 4 });
      lab.textContent = v * 100 + " %";
      chart.appendChild(lab);
    });
    var topLab = svg("text", { class: "mon-axis", x: 2, y: T + 8 });
    topLab.textContent = String(max);
    chart.appendChild(topLab);
    var lines = { review_agreement: [], needs_review_rate: [], urgent_rate: [] };
    weeks.forEach(function (w, i) {
      var x = L + i * step;
      var h = ((H - T - B) * w.cases) / max;
      var bar = svg("rect", { class: "mon-bar", x: r1(x + step * 0.15), width: r1(step * 0.7), y: r1(H - B - h), height: r1(h), "data-week": w.week, "data-cases": w.cases });
      var tip = svg("title", {});
      tip.textContent = w.week + ": " + w.cases + " cases, " + w.reviewed_cases + " reviewed";
      bar.appendChild(tip);
      chart.appendChild(bar);
      var cx = x + step / 2;
      var urgent = w.cases ? ((w.urgency.urgent || 0) + (w.urgency.emergency || 0)) / w.cases : null;
      [["review_agreement", w.review_agreement], ["needs_review_rate", w.needs_review_rate], ["urgent_rate", urgent]].forEach(function (p) {
        if (p[1] !== null && p[1] !== undefined) lines[p[0]].push([r1(cx), r1(yOf(p[1]))]);
      });
      if (n <= 16 || i % Math.ceil(n / 12) === 0) {
        var t = svg("text", { class: "mon-axis", x: r1(cx), y: H - B + 14, "text-anchor": "middle" });
        t.textContent = "W" + w.week.split("-W")[1];
        chart.appendChild(t);
      }
    });
    Object.keys(lines).forEach(function (k) {
      var pts = lines[k];
      if (!pts.length) return;
      chart.appendChild(svg("polyline", { class: "mon-line " + k, points: pts.map(function (p) { return p.join(","); }).join(" ") }));
      pts.forEach(function (p) {
        chart.appendChild(svg("circle", { class: "mon-dot " + k, cx: p[0], cy: p[1], r: 3 }));
      });
    });
    clear($("mon-chart")).appendChild(chart);
    var table = el("table", { cls: "mon-table" });
    table.appendChild(el("thead", {}, [el("tr", {}, ["Week", "Cases", "Reviewed", "Agreement", "Top-1 vs outcome", "Needs review", "Urgent+"].map(function (h) { return el("th", { text: h, attrs: { scope: "col" } }); }))]));
    var tb = el("tbody");
    weeks.forEach(function (w) {
      var urgent = (w.urgency.urgent || 0) + (w.urgency.emergency || 0);
      tb.appendChild(
        el("tr", {}, [
          el("th", { text: w.week, attrs: { scope: "row" } }),
          el("td", { text: String(w.cases) }),
          el("td", { text: String(w.reviewed_cases) }),
          el("td", { text: w.review_agreement === null ? "–" : dt.pct(w.review_agreement) }),
          el("td", { text: w.top1_outcome_agreement === null ? "–" : dt.pct(w.top1_outcome_agreement) }),
          el("td", { text: w.needs_review_rate === null ? "–" : dt.pct(w.needs_review_rate) }),
          el("td", { text: w.cases ? dt.pct(urgent / w.cases) : "–" }),
        ])
      );
    });
    table.appendChild(tb);
    clear($("mon-table")).appendChild(table);
  }

  /* ------------------------------------------------------------------ start */

  function init() {
    var site = $("ann-body-site");
    Array.prototype.forEach.call($("rf-body-site").options, function (o) {
      if (o.value) site.appendChild(el("option", { text: o.textContent, attrs: { value: o.value } }));
    });
    wirePicker($("rv-diagnosis"), $("rv-diagnosis-pick"));
    wirePicker($("ann-label"), $("ann-label-pick"));
    document.addEventListener("dermtriage:result", onResult);
    $("review-form").addEventListener("submit", submitReview);
    $("ann-form").addEventListener("submit", submitAnnotation);
    $("ann-close").addEventListener("click", closePolygon);
    $("ann-undo").addEventListener("click", function () {
      if (c.draft && c.draft.kind === "polygon" && c.draft.points.length) {
        c.draft.points.pop();
        c.draft.closed = false;
      } else {
        c.draft = null;
      }
      drawDraft();
    });
    $("ann-clear").addEventListener("click", function () {
      c.draft = null;
      drawDraft();
    });
    $("ann-from-outline").addEventListener("click", startFromOutline);
    $("past-load").addEventListener("click", function () { loadPast(0); });
    $("past-prev").addEventListener("click", function () { loadPast(c.pastOffset - PAGE); });
    $("past-next").addEventListener("click", function () { loadPast(c.pastOffset + PAGE); });
    $("mon-form").addEventListener("submit", loadMonitoring);
    var now = dt.current();
    if (now) onResult({ detail: now });
    document.documentElement.setAttribute("data-clinician-ready", "true");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
