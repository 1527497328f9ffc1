"""central-sim: the reference central service for omniedge (tests, demo, integrators)."""

VERSION = "1.0"
