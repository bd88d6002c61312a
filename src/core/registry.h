/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What plex.c needs from the registry's id map. Core-only; never installed.
 */
#ifndef SAMPLEX_CORE_REGISTRY_H
#define SAMPLEX_CORE_REGISTRY_H

#include <samplex/plex.h>

/* A fresh id: 1, 2, 3... from an atomic counter, never reused. */
uint64_t plex_registry_next_id(PlexRegistry *registry);

/* Maps `id` (not yet in the map) to `plex`. Returns 0 or -ENOMEM. */
int plex_registry_insert(PlexRegistry *registry, uint64_t id, Plex *plex);

/* Forgets `id`; a no-op when it is not in the map. */
void plex_registry_remove(PlexRegistry *registry, uint64_t id);

#endif
