"""Blueprints for designated institutions (定点医疗机构 / 定点药店): server-to-server, HMAC-signed (SPEC §5)."""
