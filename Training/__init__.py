"""Headless training pipeline for AmyloidKD: teacher, students, baseline, evaluation, demo.

Depends on AmyloidKDLib; AmyloidKDLib never imports from here.
"""
