"""FHIR R4 faces of a triage answer (built and validated with ``fhir.resources.R4B``).

- :mod:`service.fhir.bundle`: TriageResult -> a Bundle of RiskAssessment, Observations,
  DiagnosticReport, Media (heatmaps), Device, model-card DocumentReference and Provenance.
  Its Observations are built in :mod:`service.fhir.observations`, the code systems, ids and the
  resource collector live in :mod:`service.fhir.codes`.
- :mod:`service.fhir.intake`: a Bundle or Parameters (Patient, Observations, Media or Binary) ->
  the engine's inputs.
- :mod:`service.fhir.outcome`: errors as OperationOutcome.
"""
