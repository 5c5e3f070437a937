import os

from hypothesis import HealthCheck, settings

# Quick by default; PERMCODEC_DEEP=1 selects the deep profile.
settings.register_profile("quick", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("deep" if os.environ.get("PERMCODEC_DEEP") else "quick")
