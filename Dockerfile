FROM python:3.11-slim
WORKDIR /opt/chargewatch
COPY pyproject.toml README.md ./
COPY chargewatch chargewatch
COPY collectors collectors
COPY detectors detectors
COPY models models
COPY dashboards dashboards
RUN pip install --no-cache-dir . && useradd --system chargewatch
USER chargewatch
ENTRYPOINT ["chargewatch"]
