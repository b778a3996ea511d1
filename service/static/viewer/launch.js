// After a SMART EHR launch: the answer of this launch, read with the launch cookie (no token here).
"use strict";

async function showLaunch() {
  const status = document.getElementById("status");
  const response = await fetch("/viewer/launch/context", { credentials: "same-origin" });
  const body = await response.json();
  if (!response.ok) {
    status.textContent = body.detail || "The launch failed; launch again from the EHR.";
    return;
  }
  const result = body.result;
  status.textContent = "Patient " + body.patient + ": AI decision support, not a diagnosis.";
  if (result.urgency) {
    document.getElementById("urgency").textContent =
      "Urgency: " + result.urgency.category.replace("_", " ") + ". " + result.urgency.next_step;
  }
  const list = document.getElementById("differentials");
  for (const d of result.differentials) {
    const item = document.createElement("li");
    item.textContent = d.name + " " + Math.round(d.probability * 100) + "%";
    list.appendChild(item);
  }
  document.getElementById("open").href = "/viewer?launch=smart"; // the full viewer, on the same launch cookie
  document.getElementById("disclaimer").textContent = result.disclaimer;
  document.getElementById("answer").hidden = false;
}

showLaunch().catch(() => {
  document.getElementById("status").textContent = "The launch failed; launch again from the EHR.";
});
