"""Sweep execution: work plan (plan.py) and the block runner (execute.py)."""

from .execute import initialize_distributed, run, run_block
from .plan import Block, Plan, make_plan

__all__ = ["Block", "Plan", "initialize_distributed", "make_plan", "run", "run_block"]
