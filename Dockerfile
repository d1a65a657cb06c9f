# Stage 1: the native capture front end (native/, Rust + PyO3) as an abi3 wheel for CPython 3.11.
FROM rust:1-slim-bookworm AS native
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && python3 -m venv /opt/maturin && /opt/maturin/bin/pip install --no-cache-dir "maturin>=1.7,<2"
COPY native /src/native
RUN /opt/maturin/bin/maturin build --release --manifest-path /src/native/Cargo.toml -i python3 -o /wheels

# Stage 2: chargewatch itself.
FROM python:3.11-slim
WORKDIR /opt/chargewatch
COPY --from=native /wheels /wheels
COPY pyproject.toml README.md ./
COPY chargewatch chargewatch
COPY collectors collectors
COPY detectors detectors
COPY models models
COPY dashboards dashboards
RUN pip install --no-cache-dir /wheels/*.whl . && rm -rf /wheels && useradd --system chargewatch
USER chargewatch
ENTRYPOINT ["chargewatch"]
