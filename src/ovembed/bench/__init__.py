"""The measuring tools behind `ovembed bench`: engine and HTTP speed, soak, memory, stores. Not the product:
nothing in the serving path imports them."""
