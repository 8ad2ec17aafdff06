"""Deployment helpers: TLS credentials and the exact SuperLink/SuperNode command lines.

The command lines in docs/deploy.md and docker-compose files are the ones built here, and the
deployment tests run these builders, so documentation and tests cannot drift apart.
"""
