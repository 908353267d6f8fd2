"""Dashboards and alert rules for LocalMoE, generated from code."""
