"""Crystal mapping (seed 000): Bragg peaks found per grid point of a mesh with trackpy and
linked across points into a crystal map, live under ``databus run`` or as the seed's
bluesky callbacks behind a RemoteDispatcher."""
