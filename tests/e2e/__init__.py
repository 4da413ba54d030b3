"""End-to-end tests: real, fake and hostile registries on loopback, proxies and
relays, the CLI run as a process against them (fixtures: e2e/conftest.py)."""
