/* dermtriage viewer: the lesion timeline (GET /v1/lesions/{ref}/timeline), two visits side by side with
 * their outlines, a slider over consecutive pairs, and what changed between them. Plain JavaScript over
 * viewer.js's helpers (window.dermtriage); the kept photos are fetched with the API key and shown as
 * blob: URLs (the page's CSP allows blob: images). */
(function () {
  "use strict";

  var dt = window.dermtriage;
  var t = { data: null, urls: {}, token: 0 };

  function $(id) {
    return document.getElementById(id);
  }

  function photoURL(caseId) {
    if (t.urls[caseId]) return Promise.resolve(t.urls[caseId]);
    return fetch("/v1/cases/" + encodeURIComponent(caseId) + "/photo", { headers: dt.authHeaders() })
      .then(function (r) {
        if (!r.ok) throw new Error("photo " + r.status);
        return r.blob();
      })
      .then(function (blob) {
        t.urls[caseId] = URL.createObjectURL(blob);
        return t.urls[caseId];
      });
  }

  function drawVisit(stageId, capId, visit, extra) {
    var stage = dt.clear($(stageId));
    var o = visit.outline;
    $(capId).textContent = visit.created_at.slice(0, 10) + " · " + (visit.top_condition ? dt.words(visit.top_condition) + " " + dt.pct(visit.top_probability) : "") +
      (visit.urgency ? " · " + dt.words(visit.urgency) : "");
    if (!o) {
      stage.appendChild(dt.el("p", { cls: "hint", text: "Photo not kept for this visit." }));
      return;
    }
    stage.style.aspectRatio = o.photo_width + " / " + o.photo_height;
    var img = dt.el("img", { attrs: { alt: "Visit of " + visit.created_at.slice(0, 10) } });
    stage.appendChild(img);
    photoURL(visit.case_id).then(function (url) { img.src = url; }).catch(function () { img.alt = "Photo unavailable"; });
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + o.photo_width + " " + o.photo_height);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", "outline-layer");
    [[o.polygon, "own"], [extra || [], "registered"]].forEach(function (pair) {
      if (pair[0].length < 3) return;
      var poly = document.createElementNS(ns, "polygon");
      poly.setAttribute("points", pair[0].map(function (p) { return p.join(","); }).join(" "));
      poly.setAttribute("class", pair[1]);
      svg.appendChild(poly);
    });
    stage.appendChild(svg);
  }

  function showPair(i) {
    var d = t.data;
    var visits = d.visits;
    var a = visits[Math.min(i, visits.length - 1)];
    var b = visits[Math.min(i + 1, visits.length - 1)];
    var step = (d.changes || []).filter(function (s) { return s.earlier_case_id === a.case_id && s.later_case_id === b.case_id; })[0];
    $("tl-slider-value").textContent = (i + 1) + "–" + Math.min(i + 2, visits.length) + " of " + visits.length;
    drawVisit("tl-stage-a", "tl-cap-a", a, step ? step.later_outline_on_earlier : null);
    drawVisit("tl-stage-b", "tl-cap-b", b, null);
    var text = "";
    if (a === b) text = "One visit only: nothing to compare yet.";
    else if (!step) text = "No comparison: a photo of one of these visits was not kept.";
    else {
      text = "Verdict: " + step.verdict + ". ";
      if (step.area_change_pct != null) {
        text += "Area " + (step.area_change_pct >= 0 ? "+" : "") + step.area_change_pct + " %, diameter " + (step.diameter_change_pct >= 0 ? "+" : "") +
          step.diameter_change_pct + " %, colour ΔE " + step.delta_e + ", shape change " + Math.round(step.shape_change * 100) + " %. ";
      }
      text += (step.reasons || []).join(" ");
    }
    $("tl-change").textContent = text;
  }

  function load(ev) {
    ev.preventDefault();
    var ref = $("tl-ref").value.trim();
    if (!ref) return;
    var token = ++t.token;
    $("tl-status").textContent = "Comparing the visits of " + ref + "…";
    dt.request("GET", "/v1/lesions/" + encodeURIComponent(ref) + "/timeline")
      .then(function (data) {
        if (token !== t.token) return;
        t.data = data;
        var n = data.visits.length;
        $("tl-status").textContent = n ? n + " visit" + (n === 1 ? "" : "s") + " shown of " + data.total + "." : "No kept case has this lesion reference.";
        $("tl-body").hidden = n === 0;
        if (!n) return;
        var slider = $("tl-slider");
        slider.max = String(Math.max(0, n - 2));
        slider.value = String(Math.max(0, n - 2));
        showPair(Number(slider.value));
      })
      .catch(function (err) {
        if (token !== t.token) return;
        $("tl-body").hidden = true;
        $("tl-status").textContent = "Timeline unavailable: " + err.message;
      });
  }

  function init() {
    $("tl-form").addEventListener("submit", load);
    $("tl-slider").addEventListener("input", function () { if (t.data) showPair(Number($("tl-slider").value)); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
