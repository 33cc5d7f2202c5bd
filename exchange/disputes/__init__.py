"""Disputes over trades: claims, evidence, resolutions and the signed evidence bundle."""
