"""Collectors: turn captured traffic (pcap/pcapng files, later live capture, logs and the
mirroring proxy) into redacted OCPP message records and connection events."""
