"""See a computation: its graph forward and backward, a model's parameter table, XLA's cost figures.

`graph` draws any function; `summary` tabulates a model; `cost` reads the compiled program.
"""

from funcgrad.inspect.cost import Cost, cost
from funcgrad.inspect.graph import Cluster, Edge, Graph, Node, graph
from funcgrad.inspect.summary import Row, Summary, summary

__all__ = ["Cluster", "Cost", "Edge", "Graph", "Node", "Row", "Summary", "cost", "graph", "summary"]
