"""Metrics: families and their registry (`families`), the text views and content negotiation
(`exposition`), the process collector (`process`), and every metric inferd exports (`exported`)."""

from .exported import InferdMetrics
from .models import IMAGE_OUTCOMES, LoadedVersion, VersionMetrics
from .exposition import (CONTENT_TYPE_JSON, CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, KINDS,
                         format_openmetrics, format_text, negotiate, render)
from .families import LATENCY_BUCKETS, Counter, FamilySnapshot, Gauge, Histogram, Registry, Sample
from .process import ProcessCollector

__all__ = [
    "CONTENT_TYPE_JSON", "CONTENT_TYPE_OPENMETRICS", "CONTENT_TYPE_TEXT", "IMAGE_OUTCOMES", "KINDS",
    "LATENCY_BUCKETS", "Counter", "FamilySnapshot", "Gauge", "Histogram", "InferdMetrics", "LoadedVersion",
    "ProcessCollector", "Registry", "Sample", "VersionMetrics", "format_openmetrics", "format_text", "negotiate",
    "render",
]
