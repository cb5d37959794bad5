// SPDX-License-Identifier: GPL-2.0
/*
 * faultmod: corrupt one piece of memory-hotplug state, for drgn-vmemmap's
 * fault fixtures.  Loaded with insmod, it performs one operation at init,
 * prints "faultmod: {json}" with the old and new values, and stays loaded
 * until rmmod.  The guest is dumped right after, so the kernel never gets a
 * chance to trip over the corruption.
 *
 *   op=set_flag|clear_flag pfn=P count=C flag=owner_priv_1|reserved
 *   op=page_ref pfn=P count=C value=DELTA         (page_ref_add)
 *   op=hpg_optimized pfn=HEAD                     (set HPG_vmemmap_optimized)
 *   op=page_type pfn=P count=C value=V            (page->page_type = V, e.g. 4294967295)
 *   op=section_clear section=S mask=M             (section_mem_map &= ~M)
 *   op=section_set section=S mask=M               (section_mem_map |= M)
 *      or sflag=online|cannot_optimize_vmemmap|use_vmemmap instead of mask=M
 *      (the last two exist only on the 6.12-marking kernel: -EINVAL elsewhere)
 *   op=block_vmemmap block=B value=V              (nr_vmemmap_pages, or altmap->alloc)
 *   op=block_altmap_free block=B value=V          (6.6+: altmap->free)
 *   op=block_new_altmap block=B value=V           (give a block with none a record of V pages)
 *   op=block_start_section block=B value=S        (memory_block->start_section_nr = S)
 *   op=pmd_clear pfn=P                            (unmap the 2 MiB vmemmap leaf holding P's struct page)
 *   op=pmd_remap pfn=P value=F                    (point that leaf at frames F.. instead)
 *   op=hvo_remap pfn=HEAD                         (do to a 2 MiB HugeTLB folio's vmemmap what
 *                                                  HVO does, on a PMD-mapped vmemmap; see below)
 *   op=pgtable_owner_priv                         (set PG_owner_priv_1 on the PTE table that maps
 *                                                  pid 1's stack: what Xen PV's PG_pinned looks like)
 *   op=vmemmap_fallback pfn=P block=B             (the vmemmap page holding P's struct page, mapped
 *                                                  by a PTE, moves to a page from the page allocator
 *                                                  and B's altmap->alloc drops by one: what
 *                                                  radix__vmemmap_pte_populate() leaves when the
 *                                                  altmap cannot give it a page; see below)
 *   op=memmap_type flag=WHICH pfn=P value=V       (x86: page_type = V on a frame of the memmap,
 *                                                  found in the page tables: WHICH = backing
 *                                                  (the frame holding P's struct page),
 *                                                  hvo_head (the page an HVO'd folio at or after
 *                                                  P is remapped onto), hvo_freed (a frame HVO
 *                                                  freed from that folio); see below)
 *
 * The page-table operations are meant for offline blocks, whose struct pages
 * nothing touches before the dump; the TLB is deliberately not flushed.
 *
 * memory_blocks is static in drivers/base/memory.c: the factory passes its
 * address from System.map (the guest boots with nokaslr).
 */
#include <linux/module.h>
#include <linux/mm.h>
#include <linux/memory.h>
#include <linux/mmzone.h>
#include <linux/hugetlb.h>
#include <linux/slab.h>
#include <linux/version.h>
#include <linux/xarray.h>
#include <linux/memremap.h>
#include <linux/pid.h>
#include <linux/sched/mm.h>
#include <linux/sched/task.h>
#include <asm/pgtable.h>

static char *op = "";
static unsigned long pfn, count = 1, section, mask, block, memory_blocks_addr, init_mm_addr;
static long value;
static char *flag = "owner_priv_1";
static char *sflag = "";
module_param(op, charp, 0);
module_param(pfn, ulong, 0);
module_param(count, ulong, 0);
module_param(section, ulong, 0);
module_param(mask, ulong, 0);
module_param(block, ulong, 0);
module_param(memory_blocks_addr, ulong, 0);
/* init_mm is not exported on every architecture (ppc64): from System.map. */
module_param(init_mm_addr, ulong, 0);
module_param(value, long, 0);
module_param(flag, charp, 0);
module_param(sflag, charp, 0);

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 18, 0)
#define FLAGS_WORD(page) (&(page)->flags.f)
#else
#define FLAGS_WORD(page) (&(page)->flags)
#endif

static int flag_bit(void)
{
	if (!strcmp(flag, "owner_priv_1"))
		return PG_owner_priv_1;
	if (!strcmp(flag, "reserved"))
		return PG_reserved;
	return -1;
}

/* A section flag by name; 0 if this kernel has no such flag. */
static unsigned long section_flag_mask(void)
{
	if (!strcmp(sflag, "online"))
		return SECTION_IS_ONLINE;
#ifdef SECTION_CANNOT_OPTIMIZE_VMEMMAP
	if (!strcmp(sflag, "cannot_optimize_vmemmap"))
		return SECTION_CANNOT_OPTIMIZE_VMEMMAP;
#endif
#ifdef SECTION_USE_VMEMMAP
	if (!strcmp(sflag, "use_vmemmap"))
		return SECTION_USE_VMEMMAP;
#endif
	return 0;
}

static struct memory_block *get_block(unsigned long id)
{
	if (!memory_blocks_addr)
		return NULL;
	return xa_load((struct xarray *)memory_blocks_addr, id);
}

static int __init faultmod_init(void)
{
	unsigned long i, old = 0, new = 0;

	if (!strcmp(op, "set_flag") || !strcmp(op, "clear_flag")) {
		int bit = flag_bit();
		if (bit < 0)
			return -EINVAL;
		for (i = 0; i < count; i++) {
			unsigned long *w = FLAGS_WORD(pfn_to_page(pfn + i));
			if (i == 0)
				old = *w;
			if (op[0] == 's')
				set_bit(bit, w);
			else
				clear_bit(bit, w);
			if (i == 0)
				new = *w;
		}
		pr_info("faultmod: {\"op\": \"%s\", \"pfn\": %lu, \"count\": %lu, \"flag\": \"%s\", \"bit\": %d, \"old\": %lu, \"new\": %lu}\n",
			op, pfn, count, flag, bit, old, new);
	} else if (!strcmp(op, "page_ref")) {
		for (i = 0; i < count; i++)
			page_ref_add(pfn_to_page(pfn + i), value);
		pr_info("faultmod: {\"op\": \"%s\", \"pfn\": %lu, \"count\": %lu, \"delta\": %ld, \"new\": %d}\n",
			op, pfn, count, value, page_ref_count(pfn_to_page(pfn)));
	} else if (!strcmp(op, "page_type")) {
		for (i = 0; i < count; i++) {
			struct page *page = pfn_to_page(pfn + i);
			if (i == 0)
				old = page->page_type;
			page->page_type = (unsigned int)value;
		}
		new = pfn_to_page(pfn)->page_type;
		pr_info("faultmod: {\"op\": \"%s\", \"pfn\": %lu, \"count\": %lu, \"old\": %lu, \"new\": %lu}\n",
			op, pfn, count, old, new);
	} else if (!strcmp(op, "hpg_optimized")) {
		struct page *page = pfn_to_page(pfn);
		old = page->private;
		set_bit(HPG_vmemmap_optimized, &page->private);
		pr_info("faultmod: {\"op\": \"%s\", \"pfn\": %lu, \"bit\": %d, \"old\": %lu, \"new\": %lu}\n",
			op, pfn, HPG_vmemmap_optimized, old, page->private);
	} else if (!strcmp(op, "section_clear") || !strcmp(op, "section_set")) {
		struct mem_section *ms = __nr_to_section(section);
		if (*sflag) {
			mask = section_flag_mask();
			if (!mask)
				return -EINVAL;
		}
		old = ms->section_mem_map;
		if (op[8] == 'c')
			ms->section_mem_map &= ~mask;
		else
			ms->section_mem_map |= mask;
		pr_info("faultmod: {\"op\": \"%s\", \"section\": %lu, \"sflag\": \"%s\", \"mask\": %lu, \"old\": %lu, \"new\": %lu}\n",
			op, section, sflag, mask, old, ms->section_mem_map);
	} else if (!strcmp(op, "block_vmemmap") || !strcmp(op, "block_altmap_free") ||
		   !strcmp(op, "block_new_altmap")) {
		struct memory_block *mem = get_block(block);
		if (!mem)
			return -ENOENT;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
		if (!strcmp(op, "block_new_altmap")) {
			/* base_pfn and end_pfn are const: build it on the stack. */
			unsigned long base = section_nr_to_pfn(mem->start_section_nr);
			struct vmem_altmap tmpl = {
				.base_pfn = base,
				.end_pfn = base + memory_block_size_bytes() / PAGE_SIZE - 1,
				.free = value,
				.alloc = value,
			};
			struct vmem_altmap *a;

			if (mem->altmap)
				return -EEXIST;
			a = kmemdup(&tmpl, sizeof(tmpl), GFP_KERNEL);
			if (!a)
				return -ENOMEM;
			mem->altmap = a;
			old = 0;
			new = value;
		} else {
			if (!mem->altmap)
				return -ENOENT;
			if (!strcmp(op, "block_vmemmap")) {
				old = mem->altmap->alloc;
				mem->altmap->alloc = value;
			} else {
				old = mem->altmap->free;
				mem->altmap->free = value;
			}
			new = value;
		}
#else
		if (!strcmp(op, "block_altmap_free"))
			return -EINVAL;
		old = mem->nr_vmemmap_pages;
		mem->nr_vmemmap_pages = value;
		new = value;
#endif
		pr_info("faultmod: {\"op\": \"%s\", \"block\": %lu, \"old\": %lu, \"new\": %lu}\n",
			op, block, old, new);
	} else if (!strcmp(op, "block_start_section")) {
		struct memory_block *mem = get_block(block);
		if (!mem)
			return -ENOENT;
		old = mem->start_section_nr;
		mem->start_section_nr = value;
		pr_info("faultmod: {\"op\": \"%s\", \"block\": %lu, \"old\": %lu, \"new\": %ld}\n",
			op, block, old, value);
#ifdef CONFIG_X86
	} else if (!strcmp(op, "pmd_clear") || !strcmp(op, "pmd_remap")) {
		unsigned long va = (unsigned long)pfn_to_page(pfn);
		unsigned int level;
		pte_t *pte = lookup_address(va, &level);
		pmd_t *pmd = (pmd_t *)pte;

		if (!pte || level != PG_LEVEL_2M)
			return -ENXIO;
		old = pmd_val(*pmd);
		if (op[4] == 'c')
			set_pmd(pmd, __pmd(0));
		else
			set_pmd(pmd, pfn_pmd(value, __pgprot(pmd_flags(*pmd))));
		pr_info("faultmod: {\"op\": \"%s\", \"pfn\": %lu, \"va\": %lu, \"old\": %lu, \"new\": %lu}\n",
			op, pfn, va, old, (unsigned long)pmd_val(*pmd));
	} else if (!strcmp(op, "hvo_remap")) {
		/*
		 * HugeTLB vmemmap optimisation (mm/hugetlb_vmemmap.c) keeps the
		 * first vmemmap page of a folio and maps the others read-only
		 * onto it.  The vmemmap of a self-hosted block is one 2 MiB leaf
		 * from its altmap: split it into a PTE table mapping the same
		 * frames, then remap the folio's vmemmap pages 1.. onto page 0
		 * and set HPG_vmemmap_optimized.  The frames are not freed and
		 * the TLB is not flushed: the running kernel keeps its view
		 * until the dump, which reads the page tables from memory.
		 */
		unsigned long va = (unsigned long)pfn_to_page(pfn);
		unsigned long nr_vmemmap = (512 * sizeof(struct page)) >> PAGE_SHIFT;
		unsigned int level;
		pte_t *pte = lookup_address(va, &level);
		pmd_t *pmd = (pmd_t *)pte;
		unsigned long base, first, j;
		pte_t *table;

		if (!pte || level != PG_LEVEL_2M || (va & ~PAGE_MASK))
			return -ENXIO;
		table = (pte_t *)get_zeroed_page(GFP_KERNEL);
		if (!table)
			return -ENOMEM;
		base = pmd_pfn(*pmd);
		first = (va & ~PMD_MASK) >> PAGE_SHIFT;
		for (j = 0; j < PTRS_PER_PTE; j++)
			table[j] = pfn_pte(base + j, PAGE_KERNEL);
		for (j = first + 1; j < first + nr_vmemmap; j++)
			table[j] = pfn_pte(base + first, PAGE_KERNEL_RO);
		old = pmd_val(*pmd);
		set_pmd(pmd, __pmd(__pa(table) | _KERNPG_TABLE));
		/* Page 0 still maps the same frame: the head is reachable. */
		set_bit(HPG_vmemmap_optimized, &pfn_to_page(pfn)->private);
		pr_info("faultmod: {\"op\": \"%s\", \"pfn\": %lu, \"va\": %lu, \"old_pmd\": %lu, "
			"\"new_pmd\": %lu, \"table_pfn\": %lu, \"reused_frame\": %lu, "
			"\"remapped_pages\": %lu, \"orphaned_frames\": [%lu, %lu]}\n",
			op, pfn, va, old, (unsigned long)pmd_val(*pmd), __pa(table) >> PAGE_SHIFT,
			base + first, nr_vmemmap - 1, base + first + 1, base + first + nr_vmemmap);
#endif /* CONFIG_X86: lookup_address() and PG_LEVEL_2M are x86's */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
	} else if (!strcmp(op, "vmemmap_fallback")) {
		/*
		 * ppc64 radix maps an LMB's memmap with base pages, each from the
		 * LMB's altmap, and falls back to vmemmap_alloc_block_buf(...,
		 * NULL) (the page allocator) for a page the altmap cannot give.
		 * Leave that state behind for the last vmemmap page of a block:
		 * a copy of it on a new page, its PTE pointed there, and the
		 * altmap's count one lower (the altmap frame it used backs
		 * nothing now, as the kernel would never have taken it).  The TLB
		 * is not flushed; the dump reads the page tables from memory.
		 */
		unsigned long va = (unsigned long)pfn_to_page(pfn) & PAGE_MASK;
		struct memory_block *mem = get_block(block);
		struct page *fresh;
		pgd_t *pgd;
		p4d_t *p4d;
		pud_t *pud;
		pmd_t *pmd;
		pte_t *pte;

		if (!mem || !mem->altmap || !mem->altmap->alloc || !init_mm_addr)
			return -ENOENT;
		pgd = pgd_offset((struct mm_struct *)init_mm_addr, va);
		p4d = p4d_offset(pgd, va);
		if (p4d_none(*p4d) || p4d_leaf(*p4d))
			return -ENXIO;
		pud = pud_offset(p4d, va);
		if (pud_none(*pud) || pud_leaf(*pud))
			return -ENXIO;
		pmd = pmd_offset(pud, va);
		if (pmd_none(*pmd) || pmd_leaf(*pmd))
			return -ENXIO;
		pte = pte_offset_kernel(pmd, va);
		if (!pte_present(*pte))
			return -ENXIO;
		fresh = alloc_pages_node(page_to_nid(pfn_to_page(pfn)), GFP_KERNEL, 0);
		if (!fresh)
			return -ENOMEM;
		copy_page(page_address(fresh), (void *)va);
		old = pte_pfn(*pte);
		/* set_pte_at() is out of line and unexported on ppc64. */
		WRITE_ONCE(*pte, pfn_pte(page_to_pfn(fresh), PAGE_KERNEL));
		mem->altmap->alloc--;
		pr_info("faultmod: {\"op\": \"%s\", \"pfn\": %lu, \"va\": %lu, \"block\": %lu, "
			"\"old_frame\": %lu, \"new_frame\": %lu, \"alloc\": %lu}\n",
			op, pfn, va, block, old, page_to_pfn(fresh), mem->altmap->alloc);
#endif /* memory_block.altmap: 6.6+ */
#if defined(CONFIG_X86) && LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
	} else if (!strcmp(op, "memmap_type")) {
		/*
		 * The 6.12-memmap kernel's PGTY_memmap (patches/6.12-pg-memmap.patch):
		 * set page_type = value on a frame that holds (or held) struct
		 * pages, chosen here from the page tables, and say which.
		 */
		unsigned long p = pfn, va, frame = 0, lim = pfn + (1UL << 20);
		unsigned int level;
		pte_t *pte;
		struct page *page;

		if (strcmp(flag, "backing")) {
			/* The first HVO'd 2 MiB HugeTLB folio at or after pfn. */
			for (p = ALIGN(pfn, 512); p < lim; p += 512) {
				if (!pfn_valid(p))
					continue;
				page = pfn_to_page(p);
				if (PageHead(page) && folio_test_hugetlb(page_folio(page)) &&
				    test_bit(HPG_vmemmap_optimized, &page->private))
					break;
			}
			if (p >= lim)
				return -ENOENT;
		}
		va = (unsigned long)pfn_to_page(p) & PAGE_MASK;
		pte = lookup_address(va, &level);
		if (!pte || !pte_present(*pte))
			return -ENXIO;
		if (level == PG_LEVEL_2M)
			frame = pmd_pfn(*(pmd_t *)pte) + ((va & ~PMD_MASK) >> PAGE_SHIFT);
		else if (level == PG_LEVEL_4K)
			frame = pte_pfn(*pte);
		else
			return -ENXIO;
		if (!strcmp(flag, "hvo_freed")) {
			/*
			 * HVO split the boot memmap's 2 MiB leaf into a PTE table
			 * mapping the same frames in order (split_vmemmap_huge_pmd()),
			 * then remapped the folio's vmemmap pages and freed the frames
			 * they had: the leaf's base, from two neighbouring entries
			 * that still map in order, gives them back.
			 */
			pte_t *table = pte - ((va & ~PMD_MASK) >> PAGE_SHIFT);
			unsigned long j, k, base = 0, first = (va & ~PMD_MASK) >> PAGE_SHIFT;

			if (level != PG_LEVEL_4K)
				return -ENXIO;
			for (j = 0; j + 1 < PTRS_PER_PTE; j++)
				if (pte_present(table[j]) && pte_present(table[j + 1]) &&
				    pte_pfn(table[j + 1]) == pte_pfn(table[j]) + 1 &&
				    pte_pfn(table[j]) >= j) {
					base = pte_pfn(table[j]) - j;
					break;
				}
			if (j + 1 >= PTRS_PER_PTE)
				return -ENOENT;
			/*
			 * The folio's vmemmap pages 1.. had frames base + first + k;
			 * take the first that this table maps no more and that
			 * holds no struct pages again since (HVO freed it, and it
			 * is no other folio's replacement page now).
			 */
			for (k = 1; k < (512 * sizeof(struct page)) >> PAGE_SHIFT; k++) {
				frame = base + first + k;
				for (j = 0; j < PTRS_PER_PTE; j++)
					if (pte_present(table[j]) && pte_pfn(table[j]) == frame)
						break;
				if (j == PTRS_PER_PTE &&
				    pfn_to_page(frame)->page_type >> 24 != 0xf9 /* PGTY_memmap */)
					break;
			}
			if (k == (512 * sizeof(struct page)) >> PAGE_SHIFT)
				return -EEXIST;
		}
		page = pfn_to_page(frame);
		old = page->page_type;
		page->page_type = (unsigned int)value;
		new = page->page_type;
		pr_info("faultmod: {\"op\": \"%s\", \"which\": \"%s\", \"pfn\": %lu, "
			"\"described_pfn\": %lu, \"old\": %lu, \"new\": %lu}\n",
			op, flag, frame, p, old, new);
#endif /* memmap_type: x86 (lookup_address()), 6.12's page_type encoding */
	} else if (!strcmp(op, "pgtable_owner_priv")) {
		/*
		 * Xen PV pins page tables with PG_pinned, an alias of
		 * PG_owner_priv_1: mark a user page table the same way.  pid 1
		 * (the initramfs shell) lives until the dump, so does its table.
		 */
		struct pid *p = find_get_pid(1);
		struct task_struct *t = p ? get_pid_task(p, PIDTYPE_PID) : NULL;
		struct mm_struct *mm = t ? get_task_mm(t) : NULL;
		unsigned long addr;
		struct page *table = NULL;
		pgd_t *pgd;
		p4d_t *p4d;
		pud_t *pud;
		pmd_t *pmd;

		put_pid(p);
		if (t)
			put_task_struct(t);
		if (!mm)
			return -ESRCH;
		mmap_read_lock(mm);
		addr = mm->start_stack;
		pgd = pgd_offset(mm, addr);
		p4d = p4d_offset(pgd, addr);
		if (!p4d_none(*p4d) && !p4d_leaf(*p4d)) {
			pud = pud_offset(p4d, addr);
			if (!pud_none(*pud) && !pud_leaf(*pud)) {
				pmd = pmd_offset(pud, addr);
				if (!pmd_none(*pmd) && !pmd_leaf(*pmd))
#ifdef CONFIG_PPC64
					/* pmd_page() is out of line, unexported. */
					table = virt_to_page((void *)pmd_page_vaddr(*pmd));
#else
					table = pmd_page(*pmd);
#endif
			}
		}
		if (table) {
			old = *FLAGS_WORD(table);
			set_bit(PG_owner_priv_1, FLAGS_WORD(table));
			new = *FLAGS_WORD(table);
		}
		mmap_read_unlock(mm);
		mmput(mm);
		if (!table)
			return -ENXIO;
		pr_info("faultmod: {\"op\": \"%s\", \"pfn\": %lu, \"addr\": %lu, \"page_type\": %u, "
			"\"old\": %lu, \"new\": %lu}\n",
			op, page_to_pfn(table), addr, table->page_type, old, new);
	} else {
		return -EINVAL;
	}
	return 0;
}

static void __exit faultmod_exit(void)
{
}

module_init(faultmod_init);
module_exit(faultmod_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("drgn-vmemmap fault injector for fixture kernels");
