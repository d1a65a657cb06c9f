"""What incident responders use, on either store (:class:`chargewatch.store.Store`):

* :mod:`~chargewatch.responder.common`: durations and times as responders type them, opening the
  store a command names, plain-text tables;
* :mod:`~chargewatch.responder.timeline`: one charge point's records and alerts in time order,
  each CALL paired with its answer, the records that triggered alerts marked;
* :mod:`~chargewatch.responder.bundle`: the evidence bundle of one alert;
* :mod:`~chargewatch.responder.pcap_evidence` and :mod:`~chargewatch.responder.stream_redact`:
  the alert's packets from the original capture, redacted like every other output.

The CLI commands (``chargewatch alerts|timeline|export|triage``) are thin layers over these, so
the dashboard can reuse them.
"""
