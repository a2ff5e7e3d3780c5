"""Parses Prometheus text exposition from stdin with the official client's
parser and prints the families as JSON: [{name, type, samples: [{name,
labels, value}]}]. Exits non-zero (with the parser's error) on bad input."""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families

families = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": family.name,
        "type": family.type,
        "samples": [
            {
                "name": s.name,
                "labels": s.labels,
                "value": "+Inf" if math.isinf(s.value) else s.value,
            }
            for s in family.samples
        ],
    })
json.dump(families, sys.stdout)
