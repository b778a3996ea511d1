"""HL7 CDS Hooks faces of a triage answer: discovery, the patient-view service, cards, feedback.

- :mod:`service.cds_hooks.services`: the discovery document and the request model.
- :mod:`service.cds_hooks.prefetch`: prefetch (or fetched) FHIR data -> photo + clinical input; 412 rules.
- :mod:`service.cds_hooks.cards`: TriageResult -> one card.
- :mod:`service.cds_hooks.state`: photo-result cache and the feedback store interface.
"""
