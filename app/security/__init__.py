"""Security primitives: personal-data encryption and masking (R17), ID-number checks (R18),
pledge signatures (R4) and institution request signatures (SPEC §5).

Every module here is pure Python over ``cryptography``; none imports Flask or SQLAlchemy.
"""
